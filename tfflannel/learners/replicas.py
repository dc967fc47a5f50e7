"""What training does differently under several replicas, with public tf.distribute and Keras APIs only.

- `in_multi_worker_mode`: a `MultiWorkerMirroredStrategy` spanning more than one worker;
- `shard_by_data`: every worker takes its share of each global batch;
- `AverageBatchNormStatistics`: BatchNormalization's moving mean and variance are updated by each replica from
  its own part of the batch and are not synchronized, so after an epoch every worker holds other statistics
  (on one host, MirroredStrategy keeps per-replica copies too and reads the first). The callback averages them
  over all replicas at the end of every epoch, before validation and the checkpoint, so every worker then holds
  the same model as the chief;
- `precise_bn_batches`: precise BN (recomputing BN statistics before validation) runs on one replica only; under
  several replicas it is skipped, and said so in the log, never silently.
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

from tfflannel.models.precise_bn import model_layers

log = logging.getLogger(__name__)


def in_multi_worker_mode(strategy):
    """True when `strategy` is a `MultiWorkerMirroredStrategy` whose cluster has more than one worker.

    Args:
        strategy: tf.distribute.Strategy or None.
    """
    if strategy is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return len(cluster.get("chief", [])) + len(cluster.get("worker", [])) > 1


def local_value(value, strategy):
    """This worker's first replica's part of a distributed value (the value itself when it is not distributed).

    Args:
        value: a tensor or tf.distribute.DistributedValues.
        strategy: tf.distribute.Strategy.
    """
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def shard_by_data(dataset):
    """`dataset` with tf.data's auto-sharding set to `DATA`, for training in multi-worker mode.

    Every worker builds the same training pipeline from (seed, epoch); sharding by element splits each
    global batch over the workers, so together they train on the batches one host would. (Sharding by
    file, tf.data's choice for TFRecords, would give the workers unequal numbers of batches.)

    Args:
        dataset: tf.data.Dataset. The global-batch training pipeline.

    Returns:
        tf.data.Dataset.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def precise_bn_batches(requested, strategy, option):
    """The precise-BN batches to use: `requested` on one replica, 0 (with a warning naming `option`) on several.

    Precise BN calls the model in training mode outside `fit`, in the cross-replica context, where
    MirroredStrategy's per-replica BatchNormalization statistics cannot be recomputed consistently.

    Args:
        requested: int. The config's `precise_bn_batches`.
        strategy: tf.distribute.Strategy.
        option: str. The config key, for the message (e.g. `patched.precise_bn_batches`).

    Returns:
        int.
    """
    replicas = strategy.num_replicas_in_sync
    if replicas > 1 and requested:
        log.warning("%s=%d is not applied: precise BN runs on one replica and this run has %d; selection and the "
                    "saved model use the moving BN statistics%s. Set %s=0 to silence this.", option, requested,
                    replicas, " (averaged over all replicas each epoch)" if in_multi_worker_mode(strategy) else "",
                    option)
        return 0
    return requested


class AverageBatchNormStatistics(keras.callbacks.Callback):
    """At each epoch's end, set every BatchNormalization moving mean and variance to its mean over all replicas.

    Put it first in the callback list, so validation, checkpoints and the saved model see the averaged
    statistics; every worker then holds the same weights. Does nothing outside multi-worker mode.
    """

    def on_epoch_end(self, epoch, logs=None):
        """Average the moving statistics over the replicas of all workers (one collective all-reduce)."""
        strategy = self.model.distribute_strategy
        if not in_multi_worker_mode(strategy):
            return
        variables = [variable for layer in model_layers(self.model)
                     if isinstance(layer, keras.layers.BatchNormalization)
                     for variable in (layer.moving_mean, layer.moving_variance)]
        if not variables:
            return

        def replica_mean():
            context = tf.distribute.get_replica_context()
            return context.all_reduce("MEAN", [tf.convert_to_tensor(v.value) for v in variables])

        means = strategy.run(replica_mean)
        for variable, mean in zip(variables, means, strict=True):
            variable.assign(strategy.experimental_local_results(mean)[0])
