"""Keras `fit` under `MultiWorkerMirroredStrategy`: two fixes to Keras 3's TensorFlow trainer (TensorFlow-specific).

Keras 3.15's TensorFlow trainer fails in two places when several worker processes train one model
(tensorflow/tensorflow#72388):

1. `TensorFlowTrainer._maybe_symbolic_build` builds the model from the first input batch, which it
   gets with `strategy.reduce("MEAN", batch)`; a multi-worker strategy cannot convert the batch's
   `PerReplica` values ("unsupported type PerReplica"). Only the batch's shapes and dtypes matter
   there, so the fix builds from this worker's first replica's batch (what the original does on one host).
2. `reduce_per_replica(..., "mean")` reduces each log with `strategy.reduce("MEAN", value, axis=0)`,
   which fails on the scalar losses and metrics ("Invalid reduction dimension 0 for input with 0
   dimensions"). On one host Keras takes the element-wise mean over the replicas
   (`tf.reduce_mean(local_results, axis=0)`); the fix does the same over all workers' replicas:
   `strategy.reduce("MEAN", value, axis=None)`.

A third difference is not a failure: BatchNormalization's moving mean and variance are updated by
each replica from its own part of the batch and are not synchronized, so after an epoch every worker
holds other statistics (on one host, MirroredStrategy keeps per-replica copies too and reads the
first). `AverageBatchNormStatistics` averages them over all replicas at the end of every epoch, before
validation and the checkpoint, so every worker then holds the same model as the chief.

`install()` replaces the two Keras functions by wrappers that call the originals unchanged unless
the model's strategy is a `MultiWorkerMirroredStrategy` in multi-worker mode, so single-host training
(default or `MirroredStrategy`) runs exactly the code it ran before. `make_strategy` installs them
when it creates the multi-worker strategy.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

_ORIGINAL = {}


def in_multi_worker_mode(strategy):
    """True when `strategy` is a `MultiWorkerMirroredStrategy` spanning more than one worker.

    Args:
        strategy: tf.distribute.Strategy or None.
    """
    return (strategy is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())


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


def _local_value(value, strategy):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    strategy = self._distribute_strategy
    if not in_multi_worker_mode(strategy):
        return _ORIGINAL["_maybe_symbolic_build"](self, iterator=iterator, data_batch=data_batch)
    if iterator is not None:
        for _, _, batches in iterator:
            data_batch = tree.map_structure(lambda value: _local_value(value, strategy), next(batches))
            break
    with strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _reduce_per_replica(values, strategy, reduction):
    if reduction in ("auto", "mean") and in_multi_worker_mode(strategy):
        return tree.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
    return _ORIGINAL["reduce_per_replica"](values, strategy, reduction)


def install():
    """Put the two multi-worker fixes into Keras' TensorFlow trainer (once per process; idempotent).

    Raises:
        RuntimeError: the installed Keras no longer has the patched functions (another Keras version
            than the one these fixes were written for, 3.15).
    """
    if _ORIGINAL:
        return
    trainer_class = tf_trainer.TensorFlowTrainer
    if not (callable(getattr(tf_trainer, "reduce_per_replica", None))
            and callable(getattr(trainer_class, "_maybe_symbolic_build", None))):
        raise RuntimeError("tfflannel.learners.multi_worker: this Keras has no TensorFlowTrainer._maybe_symbolic_build "
                           "or reduce_per_replica; the multi-worker fixes were written for Keras 3.15")
    _ORIGINAL["_maybe_symbolic_build"] = trainer_class._maybe_symbolic_build
    _ORIGINAL["reduce_per_replica"] = tf_trainer.reduce_per_replica
    trainer_class._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = _reduce_per_replica


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
        variables = [variable for layer in self.model._flatten_layers()
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
