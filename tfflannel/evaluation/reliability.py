"""Reliability diagrams and the calibration table of the `evaluate` report."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tfflannel.evaluation.calibration import ECE_BINS, expected_calibration_error, reliability_bins  # noqa: E402
from tfflannel.evaluation.plots import save_figure  # noqa: E402

CALIBRATION_COLUMNS = ("run", "ece", "classwise_ece", "brier", "nll", "temperature", "ece_before", "n", "folds")


def plot_reliability(labels, probabilities, title, path, before=None, bins=ECE_BINS):
    """Top-label reliability diagram (accuracy against confidence per bin) with the film count per bin, as a PNG.

    Args:
        labels: array-like of shape `(N,)`, int. True class indices.
        probabilities: array-like of shape `(N, C)`, float. The probabilities evaluated (calibrated where a
            temperature applies).
        title: str. Plot title.
        path: str or Path. Output PNG, written atomically.
        before: array-like of shape `(N, C)` or None. The uncalibrated probabilities, drawn as a second curve.
            Defaults to `None`.
        bins: int. Equal-width bins. Defaults to `15`.

    Returns:
        `path`.
    """
    labels = np.asarray(labels, int)
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, label="perfect calibration")
    curves = [("before temperature", before, "--"), ("after temperature", probabilities, "-")] \
        if before is not None else [("uncalibrated", probabilities, "-")]
    for name, probs, style in curves:
        probs = np.asarray(probs, float)
        rows = [r for r in reliability_bins(probs.argmax(axis=1) == labels, probs.max(axis=1), bins) if r["count"]]
        ece = expected_calibration_error(labels, probs, bins)
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], style, marker="o", markersize=3,
                label=f"{name} (ECE {ece:.3f})")
    counts = reliability_bins(np.zeros(len(labels)), np.asarray(probabilities, float).max(axis=1), bins)
    ax_count.bar([(r["lower"] + r["upper"]) / 2 for r in counts], [r["count"] for r in counts], width=1 / bins * 0.9,
                 color="tab:blue", alpha=0.6)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="accuracy in bin", title=title)
    ax_count.set(xlabel="top-label probability (15 bins)", ylabel="films" if before is None else "films (after T)")
    ax.legend(fontsize=7, loc="upper left")
    ax.title.set_fontsize(8)
    return save_figure(fig, path)


def calibration_markdown(rows, notes):
    """The report's calibration table and one note per run on where its temperature comes from.

    Args:
        rows: list of dict. calibration.csv rows (`CALIBRATION_COLUMNS`).
        notes: dict. {run: [note per fold]} from `ensemble.calibration.run_temperature`.

    Returns:
        list of str. Markdown lines.
    """
    def number(value):
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"

    lines = ["| model | T | ECE before T | ECE | classwise ECE | Brier | NLL | films |", "|" + "---|" * 8]
    for row in rows:
        lines.append(f"| {row['run']} | {row['temperature']} | {number(row['ece_before'])} | {number(row['ece'])} | "
                     f"{number(row['classwise_ece'])} | {number(row['brier'])} | {number(row['nll'])} | {row['n']} |")
    lines.append("")
    for run, run_notes in notes.items():
        lines.append(f"- {run}: " + "; ".join(dict.fromkeys(run_notes)))
    return lines
