"""tf.distribute strategy selection, replica-safe batch sizes and chief-only writing (TensorFlow-specific).

Several hosts train one model with `MultiWorkerMirroredStrategy`, configured by the standard
`TF_CONFIG` environment variable (https://www.tensorflow.org/tutorials/distribute/multi_worker_with_keras):

```
TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
```

Every worker runs the same command with the same `--out`. As TensorFlow's guide prescribes, every
worker saves (saving may need collective ops), but only the chief (task `chief`, else `worker` 0) saves
into the run directory; the others write into a temporary directory that is deleted when the run ends
(`run_dir_of_worker`). A resumed run restores every worker from the chief's checkpoint, so the run
directory must be on a filesystem that all workers can read (what Keras' `BackupAndRestore` requires too).

Keras 3.15's `model.fit` fails under `MultiWorkerMirroredStrategy` as it is (tensorflow/tensorflow#72388);
`make_strategy` imports and installs the fixes of `tfflannel/learners/keras_multi_worker_patch.py` (the one module
that touches Keras' private trainer) only when it creates that strategy, and training averages BatchNorm's
moving statistics over the workers after every epoch (`learners/replicas.py`), so every worker holds the chief's
model. `tests/learners_stage/test_multi_worker.py` trains with two workers.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import tensorflow as tf

from tfflannel.errors import InputError

log = logging.getLogger(__name__)

STRATEGIES = ("auto", "mirrored", "multi_worker", "default")
_MULTI_WORKER = []        # the process's MultiWorkerMirroredStrategy: it can be created only once, before any op


def tf_config():
    """The parsed `TF_CONFIG` environment variable (`{}` when unset or empty).

    Raises:
        ValueError: `TF_CONFIG` is not JSON.
    """
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"TF_CONFIG is not valid JSON ({error}). Received: {text[:200]!r}.") from None


def cluster_workers(config=None):
    """Number of training tasks (`chief` + `worker`) that `TF_CONFIG` names; 0 without `TF_CONFIG`.

    Args:
        config: dict. A parsed TF_CONFIG. Defaults to `tf_config()`.
    """
    cluster = (tf_config() if config is None else config).get("cluster", {})
    return len(cluster.get("chief", [])) + len(cluster.get("worker", []))


def is_chief(config=None):
    """True for the task that writes the run's outputs: `chief`, else `worker` 0, or any single-host run.

    Args:
        config: dict. A parsed TF_CONFIG. Defaults to `tf_config()`.
    """
    config = tf_config() if config is None else config
    task = config.get("task", {})
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind is None or cluster_workers(config) <= 1:
        return True
    return kind == "chief" or (kind == "worker" and index == 0 and not config.get("cluster", {}).get("chief"))


def make_strategy(name="auto"):
    """The tf.distribute strategy for `runtime.strategy`.

    Args:
        name: str. `auto`: MultiWorkerMirroredStrategy when TF_CONFIG names more than one worker, else
            MirroredStrategy when more than one GPU is visible, else the default strategy. `mirrored`: all
            GPUs of this host, or all logical CPU devices when there is none. `multi_worker`:
            MultiWorkerMirroredStrategy from TF_CONFIG (one worker without it). `default`: no distribution.
            Defaults to `auto`.

    Returns:
        tf.distribute.Strategy.

    Raises:
        ValueError: an unknown name, or a bad TF_CONFIG.
    """
    if name not in STRATEGIES:
        raise InputError(f"runtime.strategy must be one of {list(STRATEGIES)}. Received: {name!r}.")
    if name == "multi_worker" or (name == "auto" and cluster_workers() > 1):
        # Checked before any device query: the collective ops must be configured before TensorFlow starts.
        if not _MULTI_WORKER:
            from tfflannel.learners import keras_multi_worker_patch

            _MULTI_WORKER.append(tf.distribute.MultiWorkerMirroredStrategy())
            keras_multi_worker_patch.install()     # Keras 3.15's fit fails under this strategy without these fixes
        return _MULTI_WORKER[0]
    gpus = tf.config.list_logical_devices("GPU")
    if name == "default" or (name == "auto" and len(gpus) <= 1):
        return tf.distribute.get_strategy()
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


_RESUME_ENTRIES = ("resume", "model.keras", "history.csv")


@contextlib.contextmanager
def run_dir_of_worker(run_dir, config=None):
    """The directory this process writes a run into: `run_dir` on the chief, a temporary one elsewhere.

    A non-chief worker's temporary directory starts as a copy of the chief's resume state (so every
    worker resumes from the same epoch) and is deleted on exit, whatever happened.

    Args:
        run_dir: str or Path. The run directory every worker was given.
        config: dict. A parsed TF_CONFIG. Defaults to `tf_config()`.

    Yields:
        Path. Where to write.
    """
    config = tf_config() if config is None else config
    if is_chief(config):
        yield Path(run_dir)
        return
    index = config.get("task", {}).get("index", 0)
    temporary = Path(tempfile.mkdtemp(prefix=f"tfflannel-worker{index}-"))
    try:
        for name in _RESUME_ENTRIES:
            source = Path(run_dir) / name
            if source.is_dir():
                shutil.copytree(source, temporary / name)
            elif source.is_file():
                shutil.copy2(source, temporary / name)
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def chief_writes(function):
    """Decorator: call `function` with its `out_dir` argument replaced by `run_dir_of_worker(out_dir)`."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        with run_dir_of_worker(bound.arguments["out_dir"]) as out_dir:
            bound.arguments["out_dir"] = out_dir
            return function(*bound.args, **bound.kwargs)

    return wrapper

