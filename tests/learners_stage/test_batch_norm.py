"""`BatchNormalization`: the fused kernels against NumPy and the Keras layer, in training and in inference."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfflannel.models.batch_norm import BatchNormalization
from tfflannel.models.precise_bn import model_layers


@pytest.fixture(autouse=True)
def _op_determinism_off(monkeypatch):
    """These tests expect the fused inference kernel: not after an earlier test in this process turned it off."""
    from tfflannel import tf_fused_batch_norm

    monkeypatch.setitem(tf_fused_batch_norm._DETERMINISTIC, "on", False)


def _layer_and_batch(fused, momentum=0.9, epsilon=1e-5):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (4, 6, 5, 8)).astype(np.float32)
    layer = BatchNormalization(fused=fused, momentum=momentum, epsilon=epsilon)
    layer.build(x.shape)
    layer.gamma.assign(rng.normal(1.0, 0.2, 8).astype(np.float32))
    layer.beta.assign(rng.normal(0.0, 0.2, 8).astype(np.float32))
    layer.moving_mean.assign(rng.normal(0.0, 1.0, 8).astype(np.float32))
    layer.moving_variance.assign(rng.uniform(0.5, 2.0, 8).astype(np.float32))
    return layer, x


def _training_step(layer, x):
    weights = tf.constant(np.random.default_rng(1).normal(size=x.shape).astype(np.float32))
    inputs = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs, training=True)
        loss = tf.reduce_sum(outputs * weights)
    gradients = tape.gradient(loss, [inputs, layer.gamma, layer.beta])
    return [np.asarray(outputs)] + [np.asarray(g) for g in gradients] + [
        np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)]


def test_fused_training_step_matches_numpy_and_the_keras_layer():
    fused_layer, x = _layer_and_batch(fused=True)
    keras_layer, _ = _layer_and_batch(fused=False)
    old_mean, old_variance = np.asarray(fused_layer.moving_mean), np.asarray(fused_layer.moving_variance)
    fused, unfused = _training_step(fused_layer, x), _training_step(keras_layer, x)

    mean, variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))            # NumPy: biased, as Keras
    gamma, beta = np.asarray(fused_layer.gamma), np.asarray(fused_layer.beta)
    np.testing.assert_allclose(fused[0], (x - mean) / np.sqrt(variance + 1e-5) * gamma + beta, atol=2e-5)
    np.testing.assert_allclose(fused[4], 0.9 * old_mean + 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused[5], 0.9 * old_variance + 0.1 * variance, rtol=1e-5)
    for name, ours, theirs in zip(("outputs", "d inputs", "d gamma", "d beta", "moving mean", "moving variance"),
                                  fused, unfused, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4, err_msg=name)


def test_the_fused_kernel_is_what_runs():
    def op_types(fused, training, trainable=True):
        layer, x = _layer_and_batch(fused)
        layer.trainable = trainable
        graph = tf.function(lambda inputs: layer(inputs, training=training)).get_concrete_function(
            tf.TensorSpec(x.shape, tf.float32)).graph
        return {op.type for op in graph.get_operations()}

    assert "FusedBatchNormV3" in op_types(fused=True, training=True)
    assert "FusedBatchNormV3" in op_types(fused=True, training=False)
    assert "FusedBatchNormV3" in op_types(fused=True, training=True, trainable=False)
    assert "FusedBatchNormV3" not in op_types(fused=False, training=True)
    assert "FusedBatchNormV3" not in op_types(fused=False, training=False)


def test_with_op_determinism_inference_uses_keras_ops(monkeypatch):
    # FusedBatchNormV3's inference gradient has no deterministic GPU kernel (UnimplementedError under op
    # determinism, which cannot be switched off again in a process: the flag `enable_op_determinism` sets is
    # patched instead of calling it).
    from tfflannel import tf_fused_batch_norm

    monkeypatch.setitem(tf_fused_batch_norm._DETERMINISTIC, "on", True)
    layer, x = _layer_and_batch(fused=True)
    for training, fused in ((False, False), (True, True)):
        graph = tf.function(lambda inputs, training=training: layer(inputs, training=training)).get_concrete_function(
            tf.TensorSpec(x.shape, tf.float32)).graph
        assert ("FusedBatchNormV3" in {op.type for op in graph.get_operations()}) is fused


def test_inference_matches_numpy_and_the_keras_layer():
    fused_layer, x = _layer_and_batch(fused=True)
    keras_layer, _ = _layer_and_batch(fused=False)
    mean, variance = np.asarray(fused_layer.moving_mean), np.asarray(fused_layer.moving_variance)
    gamma, beta = np.asarray(fused_layer.gamma), np.asarray(fused_layer.beta)
    expected = (x - mean) / np.sqrt(variance + 1e-5) * gamma + beta
    ours = np.asarray(fused_layer(x, training=False))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours, np.asarray(keras_layer(x, training=False)), rtol=1e-5, atol=1e-5)
    fused_layer.trainable = False                                          # frozen: moving statistics, as Keras
    np.testing.assert_allclose(np.asarray(fused_layer(x, training=True)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(fused_layer.moving_mean), mean)
    flat = BatchNormalization()                                            # 2-D input: not fused, Keras's ops
    flat_keras = keras.layers.BatchNormalization()
    features = x.reshape(-1, 8)
    np.testing.assert_array_equal(np.asarray(flat(features, training=True)),
                                  np.asarray(flat_keras(features, training=True)))


@pytest.mark.parametrize("backbone", ["densenet161"])
def test_backbones_use_it_and_the_config_round_trips(backbone):
    from tfflannel.models.classifier import build_classifier

    model = build_classifier(backbone, 64)
    norms = [layer for layer in model_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(isinstance(layer, BatchNormalization) and layer.fused for layer in norms)
    layer = BatchNormalization(fused=False, momentum=0.8, epsilon=1e-3)
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, BatchNormalization) and clone.fused is False and clone.momentum == pytest.approx(0.8)
