"""`BatchNormalization`: Keras's layer, with one fused kernel for a training step on TensorFlow."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tfflannel")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training step runs one fused kernel on the TensorFlow backend.

    Same variables, arguments, inference path and moving-average update as the Keras layer, so weights,
    checkpoints and the torchvision weight import are unchanged and inference is the Keras layer's op for op.
    Only a training step (`training=True`, trainable) on the TensorFlow backend with a 4-D input normalised over
    its last axis, no mask, not `synchronized`, no `renorm`, with `center` and `scale`, is computed by
    TensorFlow's `FusedBatchNormV3` and its gradient (`tfflannel.tf_fused_batch_norm`) instead of Keras's dozen
    separate ops. Outputs and gradients agree with the Keras layer to float32 rounding (tested). On any other
    backend, or with `fused=False`, this is the Keras layer.

    It keeps Keras's class name on purpose: a `.weights.h5` file names each layer's variables after its class
    (`layers/batch_normalization_3/vars`), so the shipped segmenter and every weights file saved before this
    layer existed load unchanged. Registered as `tfflannel>BatchNormalization`.

    Args:
        fused: bool. Use the fused kernel where it applies. Defaults to `True`.
        **kwargs: `keras.layers.BatchNormalization`'s arguments.
    """

    def __init__(self, fused=True, **kwargs):
        super().__init__(**kwargs)
        self.fused = bool(fused)

    def _fused_applies(self, inputs, training, mask):
        return (self.fused and bool(training) and self.trainable and mask is None and not self.synchronized
                and not self.renorm and self.center and self.scale and len(inputs.shape) == 4
                and self.axis in (-1, 3) and keras.backend.backend() == "tensorflow")

    def call(self, inputs, training=None, mask=None):
        """Normalise `inputs`: fused on TensorFlow in a training step where it applies, else as Keras does."""
        if not self._fused_applies(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        from tfflannel.tf_fused_batch_norm import fused_batch_norm_training

        inputs = keras.ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        outputs, mean, variance = fused_batch_norm_training(
            inputs, keras.ops.cast(self.gamma, inputs.dtype), keras.ops.cast(self.beta, inputs.dtype), self.epsilon)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return keras.ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        """The Keras layer's config plus `fused`."""
        return {**super().get_config(), "fused": self.fused}
