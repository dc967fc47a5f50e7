"""Metrics with scikit-learn on numeric scores (the originals took argmax over CSV strings)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from tfflannel import CLASS_NAMES


def classification_metrics(labels, scores):
    """Per-class one-vs-rest precision, recall, F1, support; macro-F1; accuracy; confusion matrix.

    Always reports the C = 4 classes of `CLASS_NAMES`, also those absent from `labels`.

    Args:
        labels: array-like of shape `(N,)`, int. True class indices in `[0, C)`.
        scores: array-like of shape `(N, C)`, float. Scores or probabilities; the prediction is
            their numeric argmax (the first class on ties).

    Returns:
        dict with `per_class` (list of C dicts `class, precision, recall, f1, support`), `macro_f1`,
        `macro_precision`, `macro_recall` (unweighted means over the C classes), `accuracy` (`0.0` when
        N is 0) and `confusion` (C x C nested lists of int, rows true, columns predicted). A class
        never predicted, or never present, gets 0 for the undefined ratio (no NaN).
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


def metrics_rows(run, fold, metrics, intervals=None):
    """Rows of metrics.csv (run, fold, class, precision, recall, f1, support, ci_low, ci_high).

    One row per class, then `macro` (macro precision, recall, F1, total support), then `accuracy`: for
    single-label classification the micro-averaged precision, recall and F1 all equal the accuracy, so that
    row holds the accuracy in all three columns.

    Args:
        run: str. Run name (a backbone or ensemble name) written in every row.
        fold: int or str. Fold written in every row.
        metrics: dict. The result of `classification_metrics`.
        intervals: dict or None. The result of `intervals.classification_intervals` on the same films: fills
            `ci_low` and `ci_high` of the F1 (and of the accuracy row). Defaults to `None` (columns left empty).

    Returns:
        list of dict. One row per class in `CLASS_NAMES` order, then `macro`, then `accuracy`.
    """
    support = sum(item["support"] for item in metrics["per_class"])
    rows = [{"run": run, "fold": fold, **item} for item in metrics["per_class"]]
    rows.append({"run": run, "fold": fold, "class": "macro", "precision": metrics["macro_precision"],
                 "recall": metrics["macro_recall"], "f1": metrics["macro_f1"], "support": support})
    accuracy = metrics["accuracy"]
    rows.append({"run": run, "fold": fold, "class": "accuracy", "precision": accuracy, "recall": accuracy,
                 "f1": accuracy, "support": support})
    for row in rows:
        low, high = _interval_of(intervals, row["class"])
        row.update({"ci_low": low, "ci_high": high})
    return rows


def _interval_of(intervals, name):
    """(low, high) of a class, `macro` or `accuracy` in a `classification_intervals` result; ("", "") if none."""
    if not intervals:
        return "", ""
    if name == "macro":
        return intervals["macro_f1"]
    if name == "accuracy":
        return intervals["accuracy"]
    return intervals["f1"][name]


def table3(metric_rows, intervals=None):
    """Per run and class: F1 mean and sample std (ddof=1) over folds, as the paper's Table 3, with intervals.

    Args:
        metric_rows: iterable of dict. Rows as `metrics_rows` makes them (or read back from
            metrics.csv: `f1` may be a string), for any number of runs and folds.
        intervals: dict or None. {run: `classification_intervals` result on the run's test predictions pooled
            over its folds}: fills `ci_low` and `ci_high`. Defaults to `None` (NaN).

    Returns:
        list of dicts `run, class, f1_mean, f1_std, folds, ci_low, ci_high`, runs in first-seen order, classes in
        CLASS_NAMES order then `macro` and `accuracy`; f1_std is NaN for a single fold.
    """
    order = [*CLASS_NAMES, "macro", "accuracy"]
    runs = list(dict.fromkeys(row["run"] for row in metric_rows))
    table = []
    for run in runs:
        for name in order:
            values = [float(r["f1"]) for r in metric_rows if r["run"] == run and r["class"] == name]
            if not values:
                continue
            std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            low, high = _interval_of((intervals or {}).get(run), name)
            table.append({"run": run, "class": name, "f1_mean": float(np.mean(values)), "f1_std": std,
                          "folds": len(values), "ci_low": float("nan") if low == "" else float(low),
                          "ci_high": float("nan") if high == "" else float(high)})
    return table


def format_mean_std(mean, std, digits=3):
    """Format a mean and std as '0.912 (0.031)'; a single fold has no std: '0.912 (n/a)'.

    Args:
        mean: float. The mean.
        std: float or None. The standard deviation; `None` or NaN prints `n/a`.
        digits: int. Decimal places of both numbers. Defaults to `3`.

    Returns:
        str. The formatted cell.
    """
    if std is None or (isinstance(std, float) and np.isnan(std)):
        return f"{mean:.{digits}f} (n/a)"
    return f"{mean:.{digits}f} ({std:.{digits}f})"


def format_cell(row, digits=3):
    """A Table-3 cell: `0.812 [0.741, 0.866]` for one fold, `0.812 (0.031) [0.741, 0.866]` for several.

    The bracket is left out where the row has no interval (NaN), the std where there is one fold.

    Args:
        row: dict. A `table3` row (`f1_mean`, `f1_std`, `folds`, optionally `ci_low`, `ci_high`).
        digits: int. Decimal places. Defaults to `3`.

    Returns:
        str.
    """
    low, high = row.get("ci_low", float("nan")), row.get("ci_high", float("nan"))
    has_interval = not (np.isnan(low) or np.isnan(high))
    if row["folds"] > 1 or not has_interval:
        text = format_mean_std(row["f1_mean"], row["f1_std"], digits)
    else:
        text = f"{row['f1_mean']:.{digits}f}"
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]" if has_interval else text


def table3_markdown(table):
    """Format a `table3` result as a Markdown table, one row per run.

    Args:
        table: list of dict. The result of `table3`.

    Returns:
        str. Header `model | <each class> | macro-F1 | accuracy | folds`, then one row per run in first-seen
        order with `format_cell` cells (empty where a class has no rows) and the run's largest fold count.
        No trailing newline.
    """
    header = ["model", *CLASS_NAMES, "macro-F1", "accuracy", "folds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in dict.fromkeys(row["run"] for row in table):
        cells = {row["class"]: format_cell(row) for row in table if row["run"] == run}
        folds = max(row["folds"] for row in table if row["run"] == run)
        lines.append("| " + " | ".join([run, *[cells.get(c, "") for c in CLASS_NAMES], cells.get("macro", ""),
                                         cells.get("accuracy", ""), str(folds)]) + " |")
    return "\n".join(lines)
