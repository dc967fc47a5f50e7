"""TensorFlow's fused batch-norm kernels, for `tfflannel.models.batch_norm.BatchNormalization`.

Keras 3 normalises with separate ops (`moments`, then `batch_normalization`: means, a squared difference, a
tile, multiplies and adds, each differentiated on its own); TensorFlow's `FusedBatchNormV3` does the forward
in one kernel and its registered gradient (`FusedBatchNormGradV3`) the backward in another, oneDNN's on a CPU
and cuDNN's on a GPU. Measured on 2 CPU cores, a DenseNet161 training step spent 1.4 s of 2.8 s in the
unfused ops, 0.44 s fused (`tools/profile_step.py --batch-norm keras|fused`; docs/benchmarks.md). In inference
the fused op lets TensorFlow's graph optimiser fold it into the convolution before it or the ReLU after it
(ResNet152's inference step 747 -> 684 ms).
"""

from __future__ import annotations

import tensorflow as tf


def fused_batch_norm_training(inputs, gamma, beta, epsilon):
    """Normalise a channels-last 4-D batch with its own statistics in one fused kernel.

    Args:
        inputs: float32 tensor (B, H, W, C).
        gamma: float32 tensor (C,). Scale.
        beta: float32 tensor (C,). Offset.
        epsilon: float. Added to the variance (any value: the raw op has no cuDNN floor on a CPU).

    Returns:
        tuple: `(outputs, mean, variance)`: the normalised batch, and the batch's per-channel mean and biased
        variance (the kernel's variance is Bessel-corrected; it is scaled back by (n - 1) / n, n = B*H*W, so the
        moving averages follow Keras's `moments`).
    """
    empty = tf.zeros([0], tf.float32)
    outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
        x=inputs, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=float(epsilon),
        exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
    count = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
    return outputs, mean, variance * tf.maximum(count - 1.0, 0.0) / count


_DETERMINISTIC = {"on": False}


def enable_op_determinism():
    """Turn on TensorFlow's op determinism, and with it stop using the fused inference kernel in this process.

    The gradient of `FusedBatchNormV3(is_training=False)` (Grad-CAM, a frozen batch norm) has no deterministic GPU
    kernel: under `tf.config.experimental.enable_op_determinism()` TensorFlow raises `UnimplementedError` there,
    where Keras's separate ops work. TensorFlow has no public query of that switch, so tfflannel turns it on only
    here (`tf_epochs.seed_run`) and the layer falls back to Keras's ops in inference from then on, on every device.
    Irreversible, as TensorFlow's switch is.
    """
    tf.config.experimental.enable_op_determinism()
    _DETERMINISTIC["on"] = True


def inference_kernel_usable():
    """Whether the fused inference kernel may be used: not after `enable_op_determinism` in this process.

    Returns:
        bool.
    """
    return not _DETERMINISTIC["on"]


def fused_batch_norm_inference(inputs, gamma, beta, mean, variance, epsilon):
    """Normalise a channels-last 4-D batch with given (moving) statistics in one fused kernel.

    Args:
        inputs: float32 tensor (B, H, W, C).
        gamma: float32 tensor (C,). Scale.
        beta: float32 tensor (C,). Offset.
        mean: float32 tensor (C,). The moving mean.
        variance: float32 tensor (C,). The moving variance.
        epsilon: float. Added to the variance.

    Returns:
        float32 tensor (B, H, W, C): `(inputs - mean) / sqrt(variance + epsilon) * gamma + beta`.
    """
    outputs, *_ = tf.raw_ops.FusedBatchNormV3(
        x=inputs, scale=gamma, offset=beta, mean=mean, variance=variance, epsilon=float(epsilon),
        exponential_avg_factor=1.0, data_format="NHWC", is_training=False)
    return outputs
