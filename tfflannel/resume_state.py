"""The resume contract: `RUNDIR/resume/state.json`, read and written only here (no TensorFlow import).

`ResumableFit` (tfflannel/resume.py) commits it after every epoch; `reproduce` reads whether a run is complete,
and serving reads which K and patch seed an ensemble's member predictions had (`member_key`, written by
train-ensemble into the fingerprint).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfflannel.errors import InputError
from tfflannel.utils import write_text_atomic

STATE_FILE = "state.json"


@dataclass
class FitState:
    """What `resume/state.json` holds.

    Args:
        fingerprint: dict. What the run depends on (settings, input hashes); a change makes the run stale.
        epochs_done: int. Epochs committed.
        best: float or None. Best monitored value so far.
        best_epoch: int or None. Its 0-based epoch.
        wait: int. Early stopping's epochs without improvement.
        stopped_early: bool. Early stopping ended the run.
        complete: bool. The run finished (all epochs, or stopped early).
        checkpoint: str or None. The optimizer checkpoint file of the last commit.
        callbacks: dict. Saved state of stateful callbacks.
        history: list of dict. Per-epoch logs.
        train_seconds: float or None. Wall-clock seconds of the committed epochs (from the start of `fit` to each
            commit), summed over every process that trained the run; not part of what makes two runs equal.
            `None` for a run started before it was recorded (its total is unknown, not partial).
    """

    fingerprint: dict = field(default_factory=dict)
    epochs_done: int = 0
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped_early: bool = False
    complete: bool = False
    checkpoint: str | None = None
    callbacks: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    train_seconds: float | None = None


def state_path(run_dir):
    """RUNDIR/resume/state.json."""
    return Path(run_dir) / "resume" / STATE_FILE


def read_fit_state(run_dir):
    """A run's committed resume state, or `None` when it has none.

    Args:
        run_dir: str or Path.

    Returns:
        FitState or None.

    Raises:
        InputError: state.json is unreadable or has unknown fields.
    """
    path = state_path(run_dir)
    if not path.is_file():
        return None
    try:
        return FitState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"{path}: unreadable resume state ({error})") from None


def write_fit_state(run_dir, state):
    """Write RUNDIR/resume/state.json atomically (the commit point of an epoch)."""
    write_text_atomic(state_path(run_dir), json.dumps(asdict(state), indent=1) + "\n")


def member_key(index, name):
    """The fingerprint entry of an ensemble's member `index` (`member0.k`, `member1.test_sha256`, ...)."""
    return f"member{index}.{name}"


def member_value(state, index, name, default=None):
    """An ensemble member's fingerprint entry from a FitState (or None), `default` when absent."""
    return (state.fingerprint if state is not None else {}).get(member_key(index, name), default)
