"""Patient-grouped, label-stratified, seeded test split and cross-validation folds."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from tfflannel.errors import InputError


def _group_folds(labels, groups, n_splits, seed):
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    counts = {str(label): int(np.sum(labels == label)) for label in np.unique(labels)}
    if max(counts.values()) < n_splits:
        raise InputError(f"every class has fewer images than the {n_splits} partitions asked for "
                         f"(images per class: {counts}); lower --folds or raise --test-size")
    return [held for _, held in splitter.split(np.zeros(len(labels)), labels, groups)]


def assign_splits(labels, groups, test_size=0.2, folds=5, seed=0):
    """Assign every row to the test set or to one of `folds` validation folds.

    Rows of one patient (group) always land in the same partition. The test set
    is one part of a `round(1 / test_size)`-way StratifiedGroupKFold (the 4:1
    split of the paper for 0.2); the rest is split into `folds` folds the same
    way. The result depends only on (labels, groups, test_size, folds, seed) and
    the row order, so callers sort rows first.

    Args:
        labels: sequence of str. One label per row.
        groups: sequence of str. One patient group per row (`group_id`: patient ids linked by shared films).
        test_size: float. Share of rows held out as test, in (0, 0.5]. Defaults to `0.2`.
        folds: int. Number of cross-validation folds, >= 2. Defaults to `5`.
        seed: int. Seeds the shuffles. Defaults to `0`.

    Returns:
        (split, fold): arrays of str ('train'/'test') and int (1..folds, 0 for test).

    Raises:
        InputError: too few patients for the requested partitions, or test_size/folds out of range.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if not 0.0 < test_size <= 0.5:
        raise InputError(f"test_size must be in (0, 0.5]. Received: test_size={test_size}.")
    if folds < 2:
        raise InputError(f"folds must be >= 2. Received: folds={folds}.")
    n_test_splits = max(2, int(round(1.0 / test_size)))
    needed = n_test_splits + folds - 1
    if len(np.unique(groups)) < needed:
        raise InputError(
            f"{len(np.unique(groups))} patients are too few for a test split of {test_size} "
            f"plus {folds} folds (need at least {needed})."
        )
    split = np.full(len(labels), "train", dtype=object)
    fold = np.zeros(len(labels), dtype=int)
    test_rows = _group_folds(labels, groups, n_test_splits, seed)[0]
    split[test_rows] = "test"
    train_rows = np.flatnonzero(split == "train")
    for number, held in enumerate(_group_folds(labels[train_rows], groups[train_rows], folds, seed + 1), start=1):
        fold[train_rows[held]] = number
    return split.astype(str), fold



def assign_external_splits(labels, groups, external, folds=5, seed=0):
    """External validation: the `external` rows (and any patient group that has one) are the test set.

    The rest is split into `folds` patient-grouped, label-stratified folds as `assign_splits` folds its training
    split.

    Args:
        labels: sequence of str. One label per row.
        groups: sequence of str. One patient group per row.
        external: sequence of bool. The rows of the held-out source(s).
        folds: int. Number of cross-validation folds, >= 2. Defaults to `5`.
        seed: int. Seeds the folds (as `assign_splits` with this seed). Defaults to `0`.

    Returns:
        (split, fold): arrays of str ('train'/'test') and int (1..folds, 0 for test).

    Raises:
        InputError: no external row, no row left to fold, or too few patients for the folds.
    """
    labels, groups, external = np.asarray(labels), np.asarray(groups), np.asarray(external, bool)
    if folds < 2:
        raise InputError(f"folds must be >= 2. Received: folds={folds}.")
    if not external.any():
        raise InputError("the test source(s) (--test-source / data.test_sources) hold no image of the data given")
    held_groups = set(groups[external])
    test = np.array([group in held_groups for group in groups])
    train_rows = np.flatnonzero(~test)
    if len(np.unique(groups[train_rows])) < folds:
        raise InputError(f"{len(np.unique(groups[train_rows]))} patients outside the test source(s) are too few "
                         f"for {folds} folds")
    split = np.where(test, "test", "train").astype(object)
    fold = np.zeros(len(labels), dtype=int)
    for number, held in enumerate(_group_folds(labels[train_rows], groups[train_rows], folds, seed + 1), start=1):
        fold[train_rows[held]] = number
    return split.astype(str), fold
