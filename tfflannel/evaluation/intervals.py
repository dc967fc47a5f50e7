"""Patient-bootstrap confidence intervals: resample the patients (`group_id`s) of a partition with replacement.

The scheme (an independent implementation can reproduce it draw for draw): the G distinct group ids, sorted
(`np.unique`), are drawn `n_resamples` times, G at a time, by
`np.random.default_rng(seed).integers(0, G, size=(n_resamples, G))`; a resample holds every film of each drawn
group, once per draw. The interval is the percentile one: the `(1 - level) / 2` and `(1 + level) / 2` quantiles
(`np.percentile`, linear interpolation) of the statistic over the resamples.

A class absent from a resample (no film of it drawn) and never predicted there has an undefined F1 (0 / 0); it is
counted as 0, as scikit-learn's `zero_division=0` counts it and as `classification_metrics` counts the point
estimate. The resamples where that happened are counted (`absent`) so a report can say so.
"""

from __future__ import annotations

import numpy as np

from tfflannel import CLASS_NAMES

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
BOOTSTRAP_LEVEL = 0.95


def draw_group_resamples(groups, n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED):
    """How often each group is drawn in each resample.

    Args:
        groups: array-like of shape `(N,)`. The group (patient) of each film; any hashable, sortable values.
        n_resamples: int. Number of resamples. Defaults to `2000`.
        seed: int. Seed of `np.random.default_rng`. Defaults to `0`.

    Returns:
        tuple `(film_group, counts)`: `film_group` (N,) int, each film's index into the sorted distinct groups;
        `counts` (n_resamples, G) int, how many times each group is drawn in each resample.

    Raises:
        ValueError: no films, or `n_resamples` < 1.
    """
    groups = np.asarray(groups)
    if not len(groups):
        raise ValueError("a bootstrap needs at least one film; received none")
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1. Received: n_resamples={n_resamples}.")
    unique, film_group = np.unique(groups, return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(unique), size=(int(n_resamples), len(unique)))
    counts = np.zeros((int(n_resamples), len(unique)), int)
    np.add.at(counts, (np.arange(int(n_resamples))[:, None], draws), 1)
    return film_group.reshape(-1), counts


def percentile_interval(values, level=BOOTSTRAP_LEVEL):
    """The percentile interval `(low, high)` of bootstrap values; NaN values (undefined resamples) are left out.

    Args:
        values: array-like of shape `(B,)`, float.
        level: float. Coverage, e.g. `0.95`. Defaults to `0.95`.

    Returns:
        tuple of two floats; `(nan, nan)` when no value is defined.
    """
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    low, high = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(low), float(high)


def bootstrap_interval(statistic, groups, n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED,
                       level=BOOTSTRAP_LEVEL):
    """Patient-bootstrap percentile interval of any statistic of a set of films.

    Args:
        statistic: callable(indices) -> float. The statistic of the films at `indices` (an int array into the
            films, with repeats); may return NaN where it is undefined (e.g. a ROC AUC with one class), and such
            resamples are left out of the interval (`n_valid` counts the rest).
        groups: array-like of shape `(N,)`. Each film's group (patient) id.
        n_resamples: int. Defaults to `2000`.
        seed: int. Defaults to `0`.
        level: float. Defaults to `0.95`.

    Returns:
        dict `low, high, n_resamples, n_valid, seed, level, groups` (G, the number of distinct groups).
    """
    film_group, counts = draw_group_resamples(groups, n_resamples, seed)
    members = [np.flatnonzero(film_group == g) for g in range(counts.shape[1])]
    values = []
    for row in counts:
        indices = np.concatenate([np.repeat(members[g], row[g]) for g in np.flatnonzero(row)])
        values.append(float(statistic(indices)))
    low, high = percentile_interval(values, level)
    return {"low": low, "high": high, "n_resamples": int(n_resamples), "n_valid": int(np.sum(~np.isnan(values))),
            "seed": int(seed), "level": float(level), "groups": int(counts.shape[1])}


def resampled_confusions(labels, predicted, groups, n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED,
                         num_classes=len(CLASS_NAMES)):
    """The confusion matrix of every patient-bootstrap resample (rows true, columns predicted).

    Args:
        labels: array-like of shape `(N,)`, int. True class indices.
        predicted: array-like of shape `(N,)`, int. Predicted class indices.
        groups: array-like of shape `(N,)`. Each film's group (patient) id.
        n_resamples: int. Defaults to `2000`.
        seed: int. Defaults to `0`.
        num_classes: int. C. Defaults to 4.

    Returns:
        (n_resamples, C, C) float array of film counts.
    """
    film_group, counts = draw_group_resamples(groups, n_resamples, seed)
    cell = np.asarray(labels, int) * num_classes + np.asarray(predicted, int)
    one_hot = np.zeros((len(cell), num_classes * num_classes))
    one_hot[np.arange(len(cell)), cell] = 1.0
    return (counts[:, film_group].astype(float) @ one_hot).reshape(-1, num_classes, num_classes)


def classification_intervals(labels, scores, groups, n_resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED,
                             level=BOOTSTRAP_LEVEL):
    """Patient-bootstrap intervals of each class's F1, the macro-F1 and the accuracy (the argmax of `scores`).

    F1 per resample is `2 TP / (2 TP + FP + FN)`, 0 where that is 0 / 0 (see the module docstring), exactly
    what `classification_metrics` computes on the same films.

    Args:
        labels: array-like of shape `(N,)`, int. True class indices.
        scores: array-like of shape `(N, C)`, float. Scores or probabilities.
        groups: array-like of shape `(N,)`. Each film's group (patient) id.
        n_resamples: int. Defaults to `2000`.
        seed: int. Defaults to `0`.
        level: float. Defaults to `0.95`.

    Returns:
        dict: `f1` {class name: (low, high)}, `macro_f1` (low, high), `accuracy` (low, high), `absent`
        {class name: resamples without a film of that class}, `n_resamples`, `seed`, `level`, `groups`.
    """
    scores = np.asarray(scores, float)
    num_classes = scores.shape[1]
    confusion = resampled_confusions(labels, scores.argmax(axis=1), groups, n_resamples, seed, num_classes)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    denominator = confusion.sum(axis=2) + confusion.sum(axis=1)         # (TP + FN) + (TP + FP)
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    accuracy = tp.sum(axis=1) / confusion.sum(axis=(1, 2))
    names = CLASS_NAMES if num_classes == len(CLASS_NAMES) else [str(c) for c in range(num_classes)]
    return {"f1": {name: percentile_interval(f1[:, c], level) for c, name in enumerate(names)},
            "macro_f1": percentile_interval(f1.mean(axis=1), level),
            "accuracy": percentile_interval(accuracy, level),
            "absent": {name: int(np.sum(confusion.sum(axis=2)[:, c] == 0)) for c, name in enumerate(names)},
            "n_resamples": int(n_resamples), "seed": int(seed), "level": float(level),
            "groups": int(len(np.unique(np.asarray(groups))))}


def patient_groups(workdir, image_ids):
    """The manifest's `group_id` (linked patients) of each image, the unit the bootstrap resamples.

    Args:
        workdir: str or Path. Work directory with manifest.csv.
        image_ids: list of str.

    Returns:
        tuple `(groups, note)`: a list of group ids (an image missing from the manifest, or every image when
        there is no manifest, is its own group) and a note saying so (empty when every image was found).
    """
    from pathlib import Path

    from tfflannel.data.manifest import load_manifest

    if not Path(workdir, "manifest.csv").is_file():
        return list(image_ids), f"no {Path(workdir, 'manifest.csv')}: each film resampled as its own patient"
    table = {row["image_id"]: row["group_id"] for row in load_manifest(workdir)}
    missing = [i for i in image_ids if i not in table]
    note = f"{len(missing)} film(s) not in the manifest resampled as their own patients" if missing else ""
    return [table.get(i, i) for i in image_ids], note
