"""The TensorFlow-specific pieces of exact resume: seeding, and training data as a chain of per-epoch pipelines.

Each epoch's pipeline is built with Python-int seeds from `epoch_seed(seed, epoch)`, so epoch e
draws the same order, patches and augmentation whether a run got there in one go or resumed after
a kill (a `reshuffle_each_iteration` stream would replay epoch 0 after a restart). tf.data's
`shuffle` needs a Python seed here: a tensor seed inside `flat_map` fails when the global seed is 0.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def seed_run(seed, deterministic=False):
    """Seed Python, NumPy, TensorFlow and Keras; with `deterministic`, also make TensorFlow's ops deterministic.

    Args:
        seed: int. The run's seed.
        deterministic: bool. Turn on TensorFlow's op determinism (GPU kernels such as cuDNN's convolution
            gradients are otherwise not bit-reproducible; CPU kernels already are) through
            `tf_fused_batch_norm.enable_op_determinism`, which also keeps batch norm's inference on Keras's ops.
            Defaults to `False`.
    """
    keras.utils.set_random_seed(int(seed))
    if deterministic:
        from tfflannel.tf_fused_batch_norm import enable_op_determinism

        enable_op_determinism()


def chain_epochs(one_epoch, first_epoch, epochs):
    """`one_epoch(first_epoch)`, then `one_epoch(first_epoch + 1)`, ... up to `epochs - 1`, prefetched.

    Args:
        one_epoch: callable(int) -> tf.data.Dataset. One epoch's batches.
        first_epoch: int. First epoch (0-based) to produce.
        epochs: int. One past the last epoch.

    Returns:
        tf.data.Dataset. The epochs concatenated as a balanced tree (nesting depth log2 of the epoch count).
    """
    parts = [one_epoch(epoch) for epoch in range(int(first_epoch), max(int(epochs), int(first_epoch) + 1))]
    while len(parts) > 1:
        parts = [parts[i].concatenate(parts[i + 1]) if i + 1 < len(parts) else parts[i]
                 for i in range(0, len(parts), 2)]
    return parts[0].prefetch(tf.data.AUTOTUNE)
