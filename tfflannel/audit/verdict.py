"""Metrics per condition and stratum, and the per-class shortcut rule."""

from __future__ import annotations

import collections

import numpy as np

from tfflannel import CLASS_NAMES
from tfflannel.evaluation.metrics import classification_metrics


def condition_metrics(labels, scores):
    """`M` of audit.json: `{"macro_f1", "accuracy", "f1": {class: F1}, "n"}` (`classification_metrics`).

    Args:
        labels: (N,) int. True classes.
        scores: (N, C) float. Scores; the prediction is their argmax.
    """
    metrics = classification_metrics(labels, scores)
    return {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
            "f1": {item["class"]: item["f1"] for item in metrics["per_class"]}, "n": int(len(labels))}


def chance_f1(prevalence):
    """F1 of always predicting a class of prevalence `p`: precision p, recall 1, so `2p / (1 + p)`."""
    return 2.0 * prevalence / (1.0 + prevalence)


TOLERANCE = 1e-9
""""At least" in the rule holds at the threshold itself, whatever the rounding of `kept_share * F1`."""


def shortcut_classes(labels, conditions, kept_share=0.8, min_gain=0.1):
    """The classes a learner still recognises without the lungs: the rule of the audit.

    A class is listed when its `lungs_removed` F1 is at least `kept_share` of its `normal` F1 while its
    `normal` F1 is at least `min_gain` above `chance_f1` of its prevalence among the films scored. Classes
    absent from `labels` are never listed.

    Args:
        labels: (N,) int. True classes of the films scored.
        conditions: dict. `{"normal": M, "lungs_removed": M, ...}` (`condition_metrics`).
        kept_share: float. `audit.kept_share`. Defaults to `0.8`.
        min_gain: float. `audit.min_gain`. Defaults to `0.1`.

    Returns:
        list of str. Class names in `CLASS_NAMES` order.
    """
    labels = np.asarray(labels, int)
    flagged = []
    for index, name in enumerate(CLASS_NAMES):
        prevalence = float(np.mean(labels == index)) if len(labels) else 0.0
        if prevalence == 0.0:
            continue
        normal = conditions["normal"]["f1"][name]
        removed = conditions["lungs_removed"]["f1"][name]
        if normal >= chance_f1(prevalence) + min_gain - TOLERANCE and removed >= kept_share * normal - TOLERANCE:
            flagged.append(name)
    return flagged


STRATA = ("source", "view", "age_group")


def strata_rows(run, labels, scores, rows):
    """Metrics per source, view and age group (where the manifest has it) of one run's `normal` scores.

    Args:
        run: str. The run's display name.
        labels: (N,) int.
        scores: (N, C) float.
        rows: list of dict. The manifest rows of the films, in the same order.

    Returns:
        list of dict: `{"run", "by", "value", "n", "macro_f1", "accuracy", "counts": {class: n}}`; an age group
        stratum only where some film's `age_group` is known.
    """
    labels, scores = np.asarray(labels, int), np.asarray(scores, float)
    out = []
    for key in STRATA:
        values = np.array([row.get(key) or "unknown" for row in rows])
        if key == "age_group" and set(values) <= {"unknown"}:
            continue
        for value in sorted(set(values)):
            keep = values == value
            metrics = classification_metrics(labels[keep], scores[keep])
            out.append({"run": run, "by": key, "value": str(value), "n": int(keep.sum()),
                        "macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
                        "counts": {name: int(np.sum(labels[keep] == i)) for i, name in enumerate(CLASS_NAMES)}})
    return out


def single_source_classes(rows):
    """Classes whose films all come from one source: `{class: source}` (the confound named in the report)."""
    sources = collections.defaultdict(set)
    for row in rows:
        sources[row["label"]].add(row["source"])
    return {name: next(iter(sources[name])) for name in CLASS_NAMES if len(sources.get(name, ())) == 1}
