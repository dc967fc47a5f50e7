"""Networks and losses in plain Keras 3 (keras.layers / keras.ops): no TensorFlow imports here."""
