"""Exact resume for every training stage (train-seg, train-patch, train-global, train-ensemble).

`training.train` drives a `ResumableFit` for each of them (one trainer, four tasks).

Keras' `BackupAndRestore` restores weights, optimizer and the epoch counter, but not the state of
callbacks (the best value and wait of early stopping or a checkpoint, ReduceLROnPlateau's counters),
it writes its files in place (a kill during the write leaves a broken backup) and it cannot tell a
finished run from a new one. `ResumableFit` keeps the same kind of backup (weights with optimizer
state, `model.save_weights`) and adds what is missing, committed in one atomic step per epoch:

RUNDIR/
    model.keras            best epoch only, without optimizer state, replaced atomically
    history.csv            one row per finished epoch, rewritten atomically (never repeats an epoch)
    resume/state.json      the commit point: epochs done, best value and epoch, wait, callback state,
                           history, the run's fingerprint, `complete`
    resume/epoch-NNNN.weights.h5   weights + optimizer state after the last committed epoch

Each epoch's random state comes from (seed, epoch), never from a stream that a restart would
replay: the input pipelines take the epoch number, and the model's own `SeedGenerator`s (dropout)
are reset to a state derived from (seed, epoch) at the start of every epoch. A kill between two
commits repeats at most the interrupted epoch, which gives the same numbers again.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np

from tfflannel.errors import InputError
from tfflannel.resume_state import FitState, read_fit_state, state_path, write_fit_state
from tfflannel.utils import atomic_path, diff_keys, write_text_atomic

log = logging.getLogger(__name__)

_STATEFUL_ATTRS = ("wait", "best", "cooldown_counter", "last")


STALE_HINT = "rerun with --force to start over"
"""What every StaleRunError message says (`reproduce` recognises a stale job's error by it)."""


class StaleRunError(InputError):
    """A run directory was made with other inputs or settings than the ones given now (its message has STALE_HINT)."""


def epoch_seed(seed, epoch):
    """One int64 seed for epoch `epoch` of a run seeded with `seed` (what every epoch's randomness uses).

    Args:
        seed: int. The run's seed.
        epoch: int or int64 scalar tensor. 0-based epoch.

    Returns:
        `(seed + 1) * 1_000_003 + epoch`: distinct for every (seed, epoch) of a run under a million epochs,
        and never equal to the small seeds that fix evaluation patches.
    """
    return (seed + 1) * 1_000_003 + epoch


def save_model_without_optimizer(model, path):
    """`model.save(path)` without the optimizer's variables, written atomically (temp file + rename).

    The optimizer state (2x the weights for Adam) belongs in the resume checkpoint, not in the model
    that inference loads.
    """
    optimizer = getattr(model, "optimizer", None)
    with atomic_path(path) as tmp:
        keras_tmp = f"{tmp}.keras"
        try:
            model.optimizer = None
            model.save(keras_tmp)
        finally:
            model.optimizer = optimizer
        Path(keras_tmp).replace(tmp)


def config_fingerprint(prefix, section):
    """A config section as fingerprint entries: `{"prefix.key": value}`, tuples as lists (as JSON stores them).

    Args:
        prefix: str. The section's name in the config tree, e.g. `"patched"`.
        section: dataclass. The config section.

    Returns:
        dict. One entry per field of the section.
    """
    return {f"{prefix}.{k}": (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(section).items()}


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if hasattr(value, "numpy"):
        return np.asarray(value).item()
    return value


def _format(value):
    return repr(float(value)) if isinstance(value, float) else str(value)


class _Commit(keras.callbacks.Callback):
    """Per epoch: seed generators reset at the start; best model, checkpoint and state committed at the end."""

    def __init__(self, fit):
        super().__init__()
        self.fit = fit

    def on_train_begin(self, logs=None):
        # After every other callback's on_train_begin (which resets counters): put the saved state back.
        for key, attrs in self.fit.state.callbacks.items():
            callback = self.fit.stateful.get(key)
            for name, value in attrs.items():
                setattr(callback, name, value)
        self.fit.clock = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.fit.reset_seed_generators(self.model, epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.fit.commit(self.model, epoch, dict(logs or {}))


class ResumableFit:
    """Train a Keras model so that a killed run, rerun, ends exactly as an uninterrupted one.

    Args:
        run_dir: str or Path. The run directory.
        epochs: int. Total epochs of the run.
        fingerprint: dict. Flat dict of what determines the run (settings, input hashes); a rerun with a
            different one stops with a `StaleRunError` naming the differences.
        seed: int. The run's seed; epoch e's random state is derived from (seed, e).
        monitor: str. Log key that selects the best epoch (`model.keras`); `None` keeps the last epoch.
            Defaults to `None`.
        mode: str. `max` or `min`. Defaults to `max`.
        patience: int. Early stopping after this many epochs without improvement; 0 disables it.
            Defaults to `0`.
        force: bool. Start over: delete the model, history, resume state and logs first. Defaults to `False`.
        save_model: callable(model, path). How `model.keras` is written. Defaults to
            `save_model_without_optimizer`.
        ignore: iterable of str. Fingerprint keys that never make a run stale: settings that do not change it
            (recorded, not compared; a run recorded before such a key existed resumes too). Defaults to `()`.

    Example:
    ```python
    fit = ResumableFit(out_dir, epochs, fingerprint, seed, monitor="val_macro_f1", patience=20)
    if not fit.complete:
        model = build()
        fit.fit(model, dataset_from(fit.initial_epoch), steps_per_epoch=steps, callbacks=[...])
    ```
    """

    def __init__(self, run_dir, epochs, fingerprint, seed, monitor=None, mode="max", patience=0, force=False,
                 save_model=save_model_without_optimizer, ignore=()):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min. Received: mode={mode!r}.")
        self.run_dir = Path(run_dir)
        self.resume_dir = self.run_dir / "resume"
        self.epochs, self.seed, self.monitor, self.mode, self.patience = int(epochs), int(seed), monitor, mode, patience
        self.save_model, self.ignore = save_model, frozenset(ignore)
        self.stateful, self.clock = {}, None
        fingerprint = {k: _plain(v) for k, v in fingerprint.items()}
        if force:
            self.clear()
        self.state = self._load(fingerprint)
        self.already_complete = self.state.complete
        self._clean_orphans()

    # --- state on disk ---------------------------------------------------------------------------------------------
    def clear(self):
        """Delete every training output of the run directory (what `--force` does)."""
        for name in ("resume", "logs", "backup"):
            shutil.rmtree(self.run_dir / name, ignore_errors=True)
        for name in ("model.keras", "history.csv"):
            (self.run_dir / name).unlink(missing_ok=True)

    def _load(self, fingerprint):
        path = state_path(self.run_dir)
        if not path.is_file():
            if (self.run_dir / "history.csv").exists():
                raise StaleRunError(f"{self.run_dir}: has a history.csv but no resume state (made by an older "
                                    f"tfflannel, or not by this command); {STALE_HINT}")
            self.clear()      # a kill before the first commit: nothing of it is kept
            return FitState(fingerprint=fingerprint, train_seconds=0.0)
        try:
            state = read_fit_state(self.run_dir)
        except InputError as error:
            raise StaleRunError(f"{error}; {STALE_HINT}") from None
        changes = diff_keys(state.fingerprint, fingerprint, ignore=self.ignore)
        if changes:
            raise StaleRunError(f"{self.run_dir} was made with other inputs or settings ({'; '.join(changes)}); "
                                f"{STALE_HINT}, or give another --out")
        return state

    def _clean_orphans(self):
        if not self.resume_dir.is_dir():
            return
        for path in self.resume_dir.iterdir():
            if path.name.endswith(".tmp") or (path.name.endswith(".weights.h5") and path.name != self.state.checkpoint):
                path.unlink(missing_ok=True)
        for path in self.run_dir.glob(".*.tmp*"):
            path.unlink(missing_ok=True)

    def _write_state(self):
        write_fit_state(self.run_dir, self.state)

    def _write_history(self):
        rows = self.state.history
        columns = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format(row.get(k, "")) for k in columns})
        write_text_atomic(self.run_dir / "history.csv", buffer.getvalue())

    # --- properties --------------------------------------------------------------------------------------------------
    @property
    def complete(self):
        """True when the run finished (all epochs, or stopped early)."""
        return self.state.complete

    @property
    def initial_epoch(self):
        """The first epoch still to train."""
        return self.state.epochs_done

    @property
    def history(self):
        """Per-epoch logs as {key: [values...]} (what `History.history` holds)."""
        keys = list(dict.fromkeys(k for row in self.state.history for k in row if k != "epoch"))
        return {k: [row.get(k) for row in self.state.history] for k in keys}

    # --- training ----------------------------------------------------------------------------------------------------
    def reset_seed_generators(self, model, epoch):
        """Set every `SeedGenerator` state of the model (dropout, ...) to one derived from (seed, epoch).

        The states are the model's variables named `seed_generator_state` (public `Model.variables`, in their
        fixed order), so nested models and layers holding several generators are included.
        """
        states = [variable for variable in model.variables if variable.name == "seed_generator_state"]
        for index, variable in enumerate(states):
            state = np.random.default_rng([self.seed, epoch, index]).integers(0, 2**31 - 1)
            variable.assign(np.array([state, 0], dtype=variable.dtype))

    def fit(self, model, data, callbacks=(), verbose=0, **fit_kwargs):
        """`model.fit` from `initial_epoch` to `epochs`, restoring the checkpoint first when resuming.

        Args:
            model: keras.Model. Compiled, built with the run's seed (its weights are replaced on resume).
            data: the training data for epochs `initial_epoch`..`epochs - 1` (a dataset or PyDataset).
            callbacks: list of keras.callbacks.Callback. Callbacks whose `wait`, `best`, `cooldown_counter`
                or `last` attributes exist are saved and restored with the run.
            verbose: int. Keras verbosity.
            **fit_kwargs: passed to `model.fit` (`steps_per_epoch`, `validation_data`, ...).

        Returns:
            dict. The full history of the run, {key: [values per epoch]}.
        """
        if self.complete:
            return self.history
        if self.state.stopped_early:            # killed after the stopping epoch's commit
            self.finish(model)
            return self.history
        self.stateful = {f"{i}:{type(c).__name__}": c for i, c in enumerate(callbacks)
                         if any(hasattr(c, a) for a in _STATEFUL_ATTRS)}
        if self.state.checkpoint:
            if model.optimizer is not None and not model.optimizer.built:
                strategy = getattr(model, "distribute_strategy", None)     # TensorFlow: where the model was built
                with strategy.scope() if strategy is not None else contextlib.nullcontext():
                    model.optimizer.build(model.trainable_variables)
            model.load_weights(self.resume_dir / self.state.checkpoint)
            log.warning("%s: resuming after epoch %d of %d", self.run_dir, self.initial_epoch, self.epochs)
        if self.initial_epoch < self.epochs:
            fit_kwargs.setdefault("shuffle", False)      # every epoch is already ordered by (seed, epoch)
            model.fit(data, epochs=self.epochs, initial_epoch=self.initial_epoch,
                      callbacks=[*callbacks, _Commit(self)], verbose=verbose, **fit_kwargs)
        self.finish(model)
        return self.history

    def commit(self, model, epoch, logs):
        """Record epoch `epoch`: best model if improved, checkpoint, callback state, history; then state.json."""
        state = self.state
        value = logs.get(self.monitor) if self.monitor else None
        improved = self.monitor is None or (value is not None and not math.isnan(value) and (
            state.best is None or (value > state.best if self.mode == "max" else value < state.best)))
        if improved:
            state.best, state.best_epoch, state.wait = (None if value is None else float(value)), epoch, 0
            self.save_model(model, self.run_dir / "model.keras")
        else:
            state.wait += 1
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = f"epoch-{epoch + 1:04d}.weights.h5"
        tmp = self.resume_dir / f".{checkpoint}"
        model.save_weights(tmp)
        tmp.replace(self.resume_dir / checkpoint)
        previous, state.checkpoint, state.epochs_done = state.checkpoint, checkpoint, epoch + 1
        if self.clock is not None and state.train_seconds is not None:     # the epoch's and its callbacks' time
            now = time.monotonic()
            state.train_seconds, self.clock = round(state.train_seconds + now - self.clock, 3), now
        state.callbacks = {key: {a: _plain(getattr(c, a)) for a in _STATEFUL_ATTRS if hasattr(c, a)}
                           for key, c in self.stateful.items()}
        state.history = [row for row in state.history if row["epoch"] < epoch]
        state.history.append({"epoch": epoch, **{k: _plain(v) for k, v in logs.items()}})
        if self.patience and state.wait >= self.patience:
            state.stopped_early = True
            model.stop_training = True
        self._write_state()                                 # the commit point
        self._write_history()
        if previous and previous != checkpoint:
            (self.resume_dir / previous).unlink(missing_ok=True)

    def finish(self, model):
        """Mark the run complete and drop the checkpoint (the optimizer state is no longer needed)."""
        if self.state.best_epoch is None and not (self.run_dir / "model.keras").exists():
            self.save_model(model, self.run_dir / "model.keras")
        checkpoint, self.state.checkpoint, self.state.complete = self.state.checkpoint, None, True
        self._write_state()
        if checkpoint:
            (self.resume_dir / checkpoint).unlink(missing_ok=True)

    def describe(self):
        """One line: `RUNDIR is complete (N epochs, best EPOCH: VALUE); --force starts over`."""
        best = "" if self.state.best_epoch is None else f", best epoch {self.state.best_epoch}"
        best += "" if self.state.best is None else f": {self.monitor} {self.state.best:.4f}"
        return (f"{self.run_dir} is complete ({self.state.epochs_done} epochs{best}"
                f"{', stopped early' if self.state.stopped_early else ''}); rerun with --force to start over")
