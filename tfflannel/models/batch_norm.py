"""`BatchNormalization`: Keras's layer, computed by TensorFlow's fused batch-norm kernels on TensorFlow."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tfflannel")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by TensorFlow's fused kernels on the TensorFlow backend.

    Same variables, arguments and moving-average update as the Keras layer, so weights, checkpoints and the
    torchvision weight import are unchanged. On the TensorFlow backend, a 4-D input normalised over its last axis,
    with no mask, no `renorm`, `center` and `scale` (and, in training, not `synchronized`) is normalised by
    `FusedBatchNormV3` (`tfflannel.tf_fused_batch_norm`) instead of Keras's separate ops: a training step (training,
    trainable) with the batch's statistics and the kernel's fused gradient, anything else with the moving
    statistics, which lets TensorFlow fold it into the convolution or ReLU next to it (not while TensorFlow's op
    determinism is on: that kernel's gradient has no deterministic GPU implementation). Outputs and gradients agree
    with the Keras layer to float32 rounding (tested). On any other backend, or with `fused=False`, this is the
    Keras layer.

    It keeps Keras's class name on purpose: a `.weights.h5` file names each layer's variables after its class
    (`layers/batch_normalization_3/vars`), so the shipped segmenter and every weights file saved before this
    layer existed load unchanged. Registered as `tfflannel>BatchNormalization`.

    Args:
        fused: bool. Use the fused kernels where they apply. Defaults to `True`.
        **kwargs: `keras.layers.BatchNormalization`'s arguments.
    """

    def __init__(self, fused=True, **kwargs):
        super().__init__(**kwargs)
        self.fused = bool(fused)

    def _fused_applies(self, inputs, batch_statistics, mask):
        return (self.fused and mask is None and not self.renorm and self.center and self.scale
                and not (batch_statistics and self.synchronized) and len(inputs.shape) == 4
                and self.axis in (-1, 3) and keras.backend.backend() == "tensorflow")

    def call(self, inputs, training=None, mask=None):
        """Normalise `inputs`: by the fused kernels on TensorFlow where they apply, else as Keras does."""
        batch_statistics = bool(training) and self.trainable
        if not self._fused_applies(inputs, batch_statistics, mask):
            return super().call(inputs, training=training, mask=mask)
        from tfflannel import tf_fused_batch_norm

        if not batch_statistics and not tf_fused_batch_norm.inference_kernel_usable():
            return super().call(inputs, training=training, mask=mask)
        inputs = keras.ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        gamma, beta = keras.ops.cast(self.gamma, inputs.dtype), keras.ops.cast(self.beta, inputs.dtype)
        if not batch_statistics:
            outputs = tf_fused_batch_norm.fused_batch_norm_inference(
                inputs, gamma, beta, keras.ops.cast(self.moving_mean, inputs.dtype),
                keras.ops.cast(self.moving_variance, inputs.dtype), self.epsilon)
            return keras.ops.cast(outputs, self.compute_dtype)
        outputs, mean, variance = tf_fused_batch_norm.fused_batch_norm_training(inputs, gamma, beta, self.epsilon)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return keras.ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        """The Keras layer's config plus `fused`."""
        return {**super().get_config(), "fused": self.fused}
