"""Metrics with scikit-learn on numeric scores (the originals took argmax over CSV strings)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from tfflannel import CLASS_NAMES


def classification_metrics(labels, scores):
    """Per-class one-vs-rest precision, recall, F1, support; macro-F1; accuracy; confusion matrix.

    Args:
        labels: (N,) int class indices.
        scores: (N, C) float scores; the prediction is their numeric argmax.

    Returns:
        dict with `per_class` (list of dicts), `macro_f1`, `accuracy`, `confusion` (C x C, rows true).
        A class never predicted gets precision 0 (no NaN).
    """
    labels = np.asarray(labels, int)
    predicted = np.argmax(np.asarray(scores, float), axis=1)
    classes = list(range(len(CLASS_NAMES)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes,
                                                                     zero_division=0)
    per_class = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                 for name, p, r, f, s in zip(CLASS_NAMES, precision, recall, f1, support, strict=True)]
    return {
        "per_class": per_class,
        "macro_f1": float(np.mean(f1)),
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "accuracy": float(accuracy_score(labels, predicted)) if len(labels) else 0.0,
        "confusion": confusion_matrix(labels, predicted, labels=classes).tolist(),
    }


def metrics_rows(run, fold, metrics):
    """Rows of metrics.csv (run, fold, class, precision, recall, f1, support), class `macro` last."""
    rows = [{"run": run, "fold": fold, **item} for item in metrics["per_class"]]
    rows.append({"run": run, "fold": fold, "class": "macro", "precision": metrics["macro_precision"],
                 "recall": metrics["macro_recall"], "f1": metrics["macro_f1"],
                 "support": sum(item["support"] for item in metrics["per_class"])})
    return rows


def table3(metric_rows):
    """Per run and class: F1 mean and sample std (ddof=1) over folds, as the paper's Table 3.

    Returns:
        list of dicts `run, class, f1_mean, f1_std, folds`, runs in first-seen order, classes in CLASS_NAMES order
        then `macro`; f1_std is NaN for a single fold.
    """
    order = [*CLASS_NAMES, "macro"]
    runs = list(dict.fromkeys(row["run"] for row in metric_rows))
    table = []
    for run in runs:
        for name in order:
            values = [float(r["f1"]) for r in metric_rows if r["run"] == run and r["class"] == name]
            if not values:
                continue
            std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            table.append({"run": run, "class": name, "f1_mean": float(np.mean(values)), "f1_std": std,
                          "folds": len(values)})
    return table


def format_mean_std(mean, std, digits=3):
    """'0.912 (0.031)'; a single fold has no std: '0.912 (n/a)'."""
    if std is None or (isinstance(std, float) and np.isnan(std)):
        return f"{mean:.{digits}f} (n/a)"
    return f"{mean:.{digits}f} ({std:.{digits}f})"


def table3_markdown(table):
    """Markdown: one row per run, columns per class F1 and macro-F1, cells 'mean (std)'."""
    header = ["model", *CLASS_NAMES, "macro-F1", "folds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in dict.fromkeys(row["run"] for row in table):
        cells = {row["class"]: format_mean_std(row["f1_mean"], row["f1_std"]) for row in table if row["run"] == run}
        folds = max(row["folds"] for row in table if row["run"] == run)
        lines.append("| " + " | ".join([run, *[cells.get(c, "") for c in CLASS_NAMES], cells.get("macro", ""),
                                         str(folds)]) + " |")
    return "\n".join(lines)
