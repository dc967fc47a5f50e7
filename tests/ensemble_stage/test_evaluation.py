"""evaluate: numbers equal scikit-learn's, no NaN for a never-predicted class, Table 3, plots."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from tfflannel.evaluation.intervals import classification_intervals
from tfflannel.evaluation.metrics import (
    classification_metrics,
    format_cell,
    format_mean_std,
    metrics_rows,
    table3,
    table3_markdown,
)
from tfflannel.evaluation.plots import plot_confusion, plot_curves


def test_metrics_equal_sklearn_with_a_class_never_predicted():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3])
    scores = np.eye(4)[[0, 1, 1, 1, 2, 0, 0, 1, 2]] * 0.7 + 0.05   # class 3 never predicted
    result = classification_metrics(labels, scores)
    predicted = scores.argmax(axis=1)
    assert result["macro_f1"] == pytest.approx(
        f1_score(labels, predicted, average="macro", labels=range(4), zero_division=0))
    for index, item in enumerate(result["per_class"]):
        assert item["precision"] == pytest.approx(
            precision_score(labels, predicted, labels=[index], average="macro", zero_division=0))
        assert item["recall"] == pytest.approx(
            recall_score(labels, predicted, labels=[index], average="macro", zero_division=0))
        assert not np.isnan(item["f1"])
    assert result["per_class"][3] == {"class": "normal", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert result["confusion"][3] == [1, 1, 1, 0]
    assert result["accuracy"] == pytest.approx(4 / 9)


def test_numeric_argmax_not_string_order():
    # As strings, '1.2e-05' > '0.9'; numerically the first class wins.
    result = classification_metrics([0], np.array([[0.9, 1.2e-05, 0.05, 0.01]]))
    assert result["accuracy"] == 1.0


def test_table3_mean_std_over_folds_and_formatting():
    rows = []
    for fold, f1s in enumerate([[0.9, 0.5, 0.6, 0.8], [0.7, 0.3, 0.6, 1.0]], start=1):
        per_class = [{"class": c, "precision": 0, "recall": 0, "f1": f, "support": 1}
                     for c, f in zip(["covid19", "viral_pneumonia", "bacterial_pneumonia", "normal"], f1s, strict=True)]
        rows += metrics_rows("patch:x", fold, {"per_class": per_class, "macro_f1": float(np.mean(f1s)),
                                               "macro_precision": 0, "macro_recall": 0, "accuracy": 0.5})
    table = table3(rows)
    covid = next(r for r in table if r["class"] == "covid19")
    assert covid["f1_mean"] == pytest.approx(0.8) and covid["f1_std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    macro = next(r for r in table if r["class"] == "macro")
    assert macro["f1_mean"] == pytest.approx(np.mean([0.7, 0.65]))
    markdown = table3_markdown(table)
    assert "| patch:x | 0.800 (0.141) |" in markdown
    assert format_mean_std(0.5, float("nan")) == "0.500 (n/a)"
    assert [r["class"] for r in table][-2:] == ["macro", "accuracy"]


def test_intervals_fill_metrics_rows_and_table3_cells():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    scores = np.eye(4)[[0, 1, 1, 1, 2, 0, 3, 3]]
    metrics = classification_metrics(labels, scores)
    intervals = classification_intervals(labels, scores, labels, n_resamples=50, seed=0)
    rows = metrics_rows("global:x", 1, metrics, intervals)
    accuracy = next(r for r in rows if r["class"] == "accuracy")
    assert accuracy["f1"] == accuracy["precision"] == metrics["accuracy"] == 0.75       # micro-F1 is the accuracy
    assert (accuracy["ci_low"], accuracy["ci_high"]) == intervals["accuracy"]
    assert (rows[0]["ci_low"], rows[0]["ci_high"]) == intervals["f1"]["covid19"]
    table = table3(rows, {"global:x": intervals})
    low, high = intervals["macro_f1"]
    assert format_cell(table[4]) == f"{metrics['macro_f1']:.3f} [{low:.3f}, {high:.3f}]"
    several = {"f1_mean": 0.812, "f1_std": 0.031, "folds": 3, "ci_low": 0.741, "ci_high": 0.866}
    assert format_cell(several) == "0.812 (0.031) [0.741, 0.866]"
    assert format_cell({**several, "folds": 1}) == "0.812 [0.741, 0.866]"
    assert "| global:x | " + format_cell(table[0]) + " |" in table3_markdown(table)


def test_plots_are_written_and_not_empty(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 40)
    scores = rng.dirichlet(np.ones(4), 40)
    for path in (plot_confusion(np.eye(4, dtype=int) * 3, "t", tmp_path / "c.png"),
                 plot_curves(labels, scores, "t", tmp_path / "r.png")):
        assert path.stat().st_size > 5000
        assert path.read_bytes()[:4] == b"\x89PNG"
