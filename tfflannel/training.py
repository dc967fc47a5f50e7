"""The one trainer: every training stage is a `TrainingTask`, and `train` runs it.

`train-seg`, `train-patch`, `train-global` and `train-ensemble` differ in their data, their model with its loss
and metrics, what makes a run stale, what is recorded before training and what is written after it. `train`
does everything else, for all four, in one order:

    fingerprint -> ResumableFit (resume, or a StaleRunError naming what changed) -> seed -> record the run
    -> tf.distribute strategy -> data from the first epoch still to train -> compiled model -> callbacks
    (multi-worker BN averaging, the task's, the caller's, TensorBoard) -> `ResumableFit.fit` (checkpoints, best model,
    early stopping, exact resume) -> finalise

A fix to resume, seeding, checkpoints, early stopping, TensorBoard or the strategy is made here (or in
`resume.py`, which `train` drives), once. Backend-agnostic: a task that is not `distributed` (train-seg) runs on
JAX too; TensorFlow-specific pieces are imported only where that backend or a strategy is used.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import keras

from tfflannel.resume import ResumableFit, config_fingerprint, save_model_without_optimizer


class TrainingTask:
    """What one kind of training run supplies; `train` does the rest.

    Subclasses set the class attributes (or instance attributes in `__init__`) and override the methods
    they need; `training_data`, `build_model` and `finalise` have no default.

    Attributes:
        section: str. The config section of the stage (`segmentation`, `patched`, `global_learner`, `ensemble`):
            its fields are fingerprinted, and its `epochs`, `seed`, `batch_size` and (when present)
            `early_stopping_patience` drive the fit.
        monitor: str. The log key that selects the best epoch; `None` keeps the last. Defaults to `None`.
        mode: str. `max` or `min`. Defaults to `"max"`.
        ignore: tuple of str. Fingerprint keys that never make a run stale. Defaults to `()`.
        distributed: bool. Build the model under `runtime.strategy`'s tf.distribute strategy (TensorFlow).
            Defaults to `False`: no strategy, any backend.
    """

    section = ""
    monitor = None
    mode = "max"
    ignore = ()
    distributed = False

    def fingerprint(self, config):
        """What determines the run beyond its config section (inputs' hashes, kind, ...). Defaults to `{}`."""
        return {}

    def patience(self, config):
        """Early-stopping patience: the section's `early_stopping_patience` (0 when it has none or no monitor)."""
        section = getattr(config, self.section)
        return getattr(section, "early_stopping_patience", 0) if self.monitor else 0

    def save_model(self, model, path):
        """How `model.keras` is written (the best epoch's model). Defaults to `save_model_without_optimizer`."""
        save_model_without_optimizer(model, path)

    def completed(self, fit, out_dir):
        """What a complete run returns without training again, or `None` when its outputs must be finalised anew.

        Defaults to `fit`.
        """
        return fit

    def prepare(self, config, out_dir):
        """After seeding, before the model: record the run (run.yaml, config.yaml), load what training needs."""

    def training_data(self, config, first_epoch, batch_size, drop_remainder):
        """`(data, fit keyword arguments)` for epochs `first_epoch`.. of the run, each drawn from (seed, epoch).

        Args:
            config: ExperimentConfig.
            first_epoch: int. The first epoch still to train.
            batch_size: int. The global batch (rounded up to a multiple of the replicas).
            drop_remainder: bool. True under several replicas (every batch must split evenly).
        """
        raise NotImplementedError

    def build_model(self, config):
        """The compiled model (optimizer, loss and metrics), built under the strategy's scope when `distributed`."""
        raise NotImplementedError

    def callbacks(self, config, model, data, out_dir):
        """The task's callbacks (validation metrics, schedule, ...), before TensorBoard. Defaults to none."""
        return []

    def finalise(self, config, fit, out_dir):
        """After the fit (or for a complete run whose outputs are missing): write the outputs; return the result."""
        raise NotImplementedError


def seed_everything(seed, deterministic=False):
    """Seed Python, NumPy and the backend; with `deterministic` on TensorFlow, its ops too (`tf_epochs.seed_run`)."""
    if deterministic and keras.backend.backend() == "tensorflow":
        from tfflannel.tf_epochs import seed_run

        seed_run(seed, deterministic=True)      # seeds as below, then turns op determinism on
    else:
        keras.utils.set_random_seed(int(seed))


def start_run(config, task, out_dir, force=False):
    """The run directory's resume state (or a StaleRunError); for a run still to train: seeded and recorded.

    Args:
        config: ExperimentConfig.
        task: TrainingTask.
        out_dir: str or Path. The run directory.
        force: bool. Start over even if `out_dir` holds a complete or different run. Defaults to `False`.

    Returns:
        ResumableFit.
    """
    return _start(config, task, out_dir, force)[0]


def _start(config, task, out_dir, force):
    """`(fit, what task.completed returned)`: the result is `None` unless the run was complete already."""
    section = getattr(config, task.section)
    fingerprint = {**config_fingerprint(task.section, section), **task.fingerprint(config)}
    fit = ResumableFit(out_dir, section.epochs, fingerprint, section.seed, monitor=task.monitor, mode=task.mode,
                       patience=task.patience(config), force=force, save_model=task.save_model, ignore=task.ignore)
    result = task.completed(fit, Path(out_dir)) if fit.complete else None
    if result is not None:
        return fit, result
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    seed_everything(section.seed, config.runtime.deterministic)
    task.prepare(config, Path(out_dir))
    return fit, None


def _strategy(config, task):
    """`runtime.strategy`'s tf.distribute strategy for a distributed task, else `None`."""
    if not task.distributed:
        return None
    from tfflannel.learners.strategy import make_strategy

    return make_strategy(config.runtime.strategy)


def train(config, task, out_dir, progress=True, extra_callbacks=(), force=False, echo=print):
    """Run `task` into `out_dir`; a killed run, rerun, ends exactly as an uninterrupted one.

    Args:
        config: ExperimentConfig. Uses `config.<task.section>` and `config.runtime`.
        task: TrainingTask.
        out_dir: str or Path. The run directory.
        progress: bool. Keras progress lines. Defaults to `True`.
        extra_callbacks: list of keras callbacks, after the task's, before TensorBoard. Defaults to `()`.
        force: bool. Start over even if `out_dir` holds a complete or different run. Defaults to `False`.
        echo: callable(str). Where the "already complete" note goes. Defaults to `print`.

    Returns:
        What `task.completed` (a complete run) or `task.finalise` returns.

    Raises:
        StaleRunError: `out_dir` holds a run made with other settings or inputs (and not `force`).
    """
    out_dir = Path(out_dir)
    fit, result = _start(config, task, out_dir, force)
    if result is not None:
        echo(fit.describe())
        return result
    if fit.complete:                     # complete, but its outputs must be written anew
        return task.finalise(config, fit, out_dir)
    section = getattr(config, task.section)
    strategy = _strategy(config, task)
    batch, multi = section.batch_size, False
    if strategy is not None:
        from tfflannel.learners.strategy import replica_batch_size

        batch, multi = replica_batch_size(section.batch_size, strategy), strategy.num_replicas_in_sync > 1
    data, fit_kwargs = task.training_data(config, fit.initial_epoch, batch, multi)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model = task.build_model(config)
    callbacks = [*task.callbacks(config, model, data, out_dir), *extra_callbacks]
    if keras.backend.backend() == "tensorflow":    # last: it logs what every other callback added to the logs
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs")))
    if strategy is not None:
        from tfflannel.learners.replicas import AverageBatchNormStatistics, in_multi_worker_mode, shard_by_data

        if in_multi_worker_mode(strategy):
            callbacks = [AverageBatchNormStatistics(), *callbacks]     # first: validation and checkpoint see them
            data = shard_by_data(data) if hasattr(data, "with_options") else data
    fit.fit(model, data, callbacks=callbacks, verbose=2 if progress else 0, **fit_kwargs)
    return task.finalise(config, fit, out_dir)
