"""The `evaluate` report's figures: confusion matrix, PR/ROC curves, F1 bars, each saved as a PNG atomically."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve  # noqa: E402

from tfflannel import CLASS_NAMES  # noqa: E402
from tfflannel.utils import atomic_path  # noqa: E402


def save_figure(fig, path):
    """Save a matplotlib figure as a PNG atomically and close it; returns `path`."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path



def plot_confusion(matrix, title, path):
    """Draw a confusion matrix with its counts and save it as a PNG (atomically).

    Args:
        matrix: array-like. (4, 4) counts, rows true class, columns predicted class, in `CLASS_NAMES` order.
        title: str. Plot title.
        path: str or Path. Output PNG.

    Returns:
        `path`.
    """
    matrix = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(CLASS_NAMES)), [c.replace("_", "\n") for c in CLASS_NAMES], fontsize=7)
    ax.set_yticks(range(len(CLASS_NAMES)), CLASS_NAMES, fontsize=7)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)
    return save_figure(fig, path)



def plot_curves(labels, scores, title, path):
    """Per-class and micro-averaged PR and ROC curves; scores used as they are (no second softmax)."""
    one_hot = np.eye(len(CLASS_NAMES))[labels]
    fig, (ax_pr, ax_roc) = plt.subplots(1, 2, figsize=(10, 4.2))
    for index, name in enumerate([*CLASS_NAMES, "micro"]):
        truth = one_hot.ravel() if name == "micro" else one_hot[:, index]
        score = scores.ravel() if name == "micro" else scores[:, index]
        if truth.sum() == 0 or truth.sum() == len(truth):
            continue  # a curve needs both positives and negatives
        precision, recall, _ = precision_recall_curve(truth, score)
        fpr, tpr, _ = roc_curve(truth, score)
        style = {"linestyle": "--", "color": "black"} if name == "micro" else {}
        ax_pr.plot(recall, precision, label=f"{name} AP={average_precision_score(truth, score):.3f}", **style)
        ax_roc.plot(fpr, tpr, label=f"{name} AUC={auc(fpr, tpr):.3f}", **style)
    ax_pr.set(xlabel="recall", ylabel="precision", title=f"PR: {title}")
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {title}")
    ax_roc.plot([0, 1], [0, 1], color="grey", linewidth=0.5)
    for ax in (ax_pr, ax_roc):
        ax.legend(fontsize=7)
        ax.title.set_fontsize(8)
    return save_figure(fig, path)



def plot_f1_bars(table, path):
    """Draw grouped bars of F1 per class and macro, one bar per run, with the std over folds as error bars.

    Args:
        table: list of dict. Table-3 rows (`run`, `class`, `f1_mean`, `f1_std`), as `table3` returns; a missing
            row is drawn as 0 and a NaN std (one fold) as no error bar.
        path: str or Path. Output PNG.

    Returns:
        `path`.
    """
    runs = list(dict.fromkeys(row["run"] for row in table))
    classes = [*CLASS_NAMES, "macro"]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(classes)), 4))
    width = 0.8 / max(len(runs), 1)
    for index, run in enumerate(runs):
        values = [next((r["f1_mean"] for r in table if r["run"] == run and r["class"] == c), 0.0) for c in classes]
        errors = [next((0.0 if np.isnan(r["f1_std"]) else r["f1_std"]
                        for r in table if r["run"] == run and r["class"] == c), 0.0)
                  for c in classes]
        ax.bar(np.arange(len(classes)) + index * width, values, width, yerr=errors, label=run)
    ax.set_xticks(np.arange(len(classes)) + width * (len(runs) - 1) / 2, classes, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1 (mean over folds)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)

