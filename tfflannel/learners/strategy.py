"""tf.distribute strategy selection and replica-safe batch sizes (TensorFlow-specific)."""

from __future__ import annotations

import logging
import math

import tensorflow as tf

log = logging.getLogger(__name__)


def make_strategy(name="auto"):
    """`auto`: MirroredStrategy when more than one GPU is visible, else the default strategy.

    `mirrored` mirrors over all GPUs, or over all logical CPU devices when there is no GPU.
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default" or (name == "auto" and len(gpus) <= 1):
        return tf.distribute.get_strategy()
    if name not in ("auto", "mirrored"):
        raise ValueError(f"runtime.strategy must be auto, mirrored or default. Received: {name!r}.")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def replica_batch_size(batch_size, strategy):
    """Round the global batch up to a multiple of the replicas.

    Keras 3 fails with an `AddN` shape error when a global batch does not split
    evenly (keras-team/keras#19246); with this rounding and `drop_remainder`,
    every batch splits evenly.
    """
    replicas = strategy.num_replicas_in_sync
    rounded = int(math.ceil(batch_size / replicas) * replicas)
    if rounded != batch_size:
        log.warning("batch size %d rounded up to %d to split evenly over %d replicas", batch_size, rounded, replicas)
    return rounded
