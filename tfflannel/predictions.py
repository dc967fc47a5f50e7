"""The predictions-CSV schema: `RUNDIR/predictions/{train,valid,test}.csv`, written and read in one place.

One row per image, keyed by image_id: the label name, the vote fractions (share of the K patches
predicting each class) and the mean softmax probabilities. Base learners (predict-base) and
ensembles (train-ensemble) write the same columns; train-ensemble and evaluate read them.
`predictions/provenance.json` records what made the files (its contract: `tfflannel/provenance.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfflannel import CLASS_NAMES
from tfflannel.errors import InputError
from tfflannel.utils import read_csv, write_csv_atomic

ROLES = ("train", "valid", "test")
SCORES = ("prob", "vote")
PREDICTION_COLUMNS = ("image_id", "label") + tuple(f"vote_{c}" for c in CLASS_NAMES) + tuple(
    f"prob_{c}" for c in CLASS_NAMES)


def prediction_row(image_id, label, votes, probabilities):
    """One row: image_id, label name, vote_<class>..., prob_<class>... (6 decimals).

    Args:
        image_id: str.
        label: int. Class index into `CLASS_NAMES`.
        votes: sequence of C floats.
        probabilities: sequence of C floats.
    """
    row = {"image_id": image_id, "label": CLASS_NAMES[int(label)]}
    row.update({f"vote_{c}": f"{float(v):.6f}" for c, v in zip(CLASS_NAMES, votes, strict=True)})
    row.update({f"prob_{c}": f"{float(p):.6f}" for c, p in zip(CLASS_NAMES, probabilities, strict=True)})
    return row


@dataclass
class Predictions:
    """A predictions file read into arrays, rows in file order.

    Args:
        path: Path. The file read.
        image_ids: list of str.
        labels: (N,) int array of class indices.
        votes: (N, C) float array.
        probs: (N, C) float array.
    """

    path: Path
    image_ids: list
    labels: np.ndarray
    votes: np.ndarray
    probs: np.ndarray

    def scores(self, score="prob"):
        """The `prob` or `vote` columns as (N, C)."""
        if score not in SCORES:
            raise InputError(f"score must be one of {list(SCORES)}. Received: score={score!r}.")
        return self.probs if score == "prob" else self.votes


def predictions_path(run_dir, role):
    """RUNDIR/predictions/<role>.csv."""
    return Path(run_dir) / "predictions" / f"{role}.csv"


def write_predictions(run_dir, role, image_ids, labels, votes, probabilities):
    """Write RUNDIR/predictions/<role>.csv atomically; returns its path.

    Args:
        run_dir: str or Path. The run directory.
        role: str. The partition (`valid`, `test`, ...): the file name.
        image_ids: list of str. N image ids.
        labels: sequence of int. N true class indices.
        votes: array. (N, C) vote shares (`vote_*` columns).
        probabilities: array. (N, C) mean probabilities (`prob_*` columns).

    Returns:
        Path: the CSV written.

    Raises:
        ValueError: the four sequences differ in length.
    """
    rows = [prediction_row(*fields) for fields in zip(image_ids, labels, votes, probabilities, strict=True)]
    path = predictions_path(run_dir, role)
    write_csv_atomic(path, rows, PREDICTION_COLUMNS)
    return path


def read_predictions(run_dir, role):
    """Read and check RUNDIR/predictions/<role>.csv.

    Raises:
        FileNotFoundError: the file is missing (names the predict-base command to run).
        InputError: wrong columns, a duplicate image_id or an unknown label.
    """
    path = predictions_path(run_dir, role)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `predict-base --run {run_dir}` first")
    rows = read_csv(path)
    with open(path, encoding="utf-8") as handle:
        header = handle.readline().strip().split(",")
    if header != list(PREDICTION_COLUMNS):
        raise InputError(f"{path}: unexpected columns {header}; expected {list(PREDICTION_COLUMNS)}")
    ids = [row["image_id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: duplicate image_id rows")
    bad = sorted({row["label"] for row in rows} - set(CLASS_NAMES))
    if bad:
        raise InputError(f"{path}: unknown label(s) {bad}; expected one of {list(CLASS_NAMES)}")
    labels = np.array([CLASS_NAMES.index(row["label"]) for row in rows], int)
    votes = np.array([[float(row[f"vote_{c}"]) for c in CLASS_NAMES] for row in rows], float)
    probs = np.array([[float(row[f"prob_{c}"]) for c in CLASS_NAMES] for row in rows], float)
    shape = (-1, len(CLASS_NAMES))
    return Predictions(path, ids, labels, votes.reshape(shape), probs.reshape(shape))
