"""Two fixes to Keras' private TensorFlow trainer for `fit` under `MultiWorkerMirroredStrategy` (quarantined).

This is the only tfflannel module that imports `keras.src`. `learners.strategy.make_strategy` imports it, and
calls `install()`, only when it creates a multi-worker strategy; single-host training (default or
`MirroredStrategy`) never imports it (`tests/learners_stage/test_public_apis.py` checks that). `install()`
refuses any Keras other than `KERAS_VERSION`, the version these fixes were written and tested for, since they
replace private functions whose names and signatures Keras may change in any release.

Keras 3.15's TensorFlow trainer fails in two places when several worker processes train one model
(tensorflow/tensorflow#72388, keras-team/keras#20585):

1. `TensorFlowTrainer._maybe_symbolic_build` builds the model from the first input batch, which it
   gets with `strategy.reduce("MEAN", batch)`; a multi-worker strategy cannot convert the batch's
   `PerReplica` values ("unsupported type PerReplica"). Only the batch's shapes and dtypes matter
   there, so the fix builds from this worker's first replica's batch (what the original does on one host).
2. `reduce_per_replica(..., "mean")` reduces each log with `strategy.reduce("MEAN", value, axis=0)`,
   which fails on the scalar losses and metrics ("Invalid reduction dimension 0 for input with 0
   dimensions"). On one host Keras takes the element-wise mean over the replicas
   (`tf.reduce_mean(local_results, axis=0)`); the fix does the same over all workers' replicas:
   `strategy.reduce("MEAN", value, axis=None)`.

The wrappers call the originals unchanged unless the model's strategy is a `MultiWorkerMirroredStrategy` in
multi-worker mode. Why a patch rather than a custom `tf.distribute` loop: the multi-worker path then trains
with the very `fit`, callbacks, resume and checkpoint code the single-host path uses (one trainer), and the
patch is two small wrappers behind an exact version check; a custom loop would be a second trainer to keep equal.
"""

from __future__ import annotations

import keras
from keras.src import tree
from keras.src.backend.tensorflow import trainer as tf_trainer

from tfflannel.learners.replicas import in_multi_worker_mode, local_value

KERAS_VERSION = "3.15.1"
_ORIGINAL = {}


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    strategy = self._distribute_strategy
    if not in_multi_worker_mode(strategy):
        return _ORIGINAL["_maybe_symbolic_build"](self, iterator=iterator, data_batch=data_batch)
    if iterator is not None:
        for _, _, batches in iterator:
            data_batch = tree.map_structure(lambda value: local_value(value, strategy), next(batches))
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
        RuntimeError: the installed Keras is not `KERAS_VERSION`, or lacks the patched functions.
    """
    if _ORIGINAL:
        return
    if keras.version() != KERAS_VERSION:
        raise RuntimeError(f"runtime.strategy multi_worker: tfflannel's fixes to Keras' private trainer were written "
                           f"for Keras {KERAS_VERSION}; this is Keras {keras.version()}. Install keras=="
                           f"{KERAS_VERSION} for multi-worker training (single-host training does not need it).")
    trainer_class = tf_trainer.TensorFlowTrainer
    if not (callable(getattr(tf_trainer, "reduce_per_replica", None))
            and callable(getattr(trainer_class, "_maybe_symbolic_build", None))):
        raise RuntimeError("runtime.strategy multi_worker: this Keras has no TensorFlowTrainer._maybe_symbolic_build "
                           f"or reduce_per_replica; the multi-worker fixes were written for Keras {KERAS_VERSION}")
    _ORIGINAL["_maybe_symbolic_build"] = trainer_class._maybe_symbolic_build
    _ORIGINAL["reduce_per_replica"] = tf_trainer.reduce_per_replica
    trainer_class._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = _reduce_per_replica
