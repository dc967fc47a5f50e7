"""Calibration metrics and temperature fitting on class probabilities (NumPy; the scaling itself is Keras ops).

Definitions (films i = 1..N, classes c = 1..C, probabilities p, one-hot truth y):

- **ECE**: the top-label probability `max_c p_ic` in `bins` equal-width bins; `sum_b (n_b / N) |acc_b - conf_b|`,
  acc_b the share of films in bin b whose argmax is their label, conf_b their mean top-label probability.
- **Classwise ECE**: for each class, the same on that class's probability `p_ic` (acc_b = share of films of the
  class in the bin), averaged over the C classes.
- **Brier**: `mean_i sum_c (p_ic - y_ic)^2` (0 to 2).
- **NLL**: `mean_i -log p_i,true` (probabilities floored at `PROBABILITY_FLOOR`).

Bins are right-closed, `[0, 1/B], (1/B, 2/B], ..., ((B-1)/B, 1]`, as scikit-learn's `calibration_curve` bins them.
"""

from __future__ import annotations

import math

import numpy as np

from tfflannel.models.calibration import PROBABILITY_FLOOR

ECE_BINS = 15
# Bounds of the temperature search (a fit that ends on one says so: the validation films did not pin T down).
TEMPERATURE_BOUNDS = (0.05, 20.0)


def _arrays(labels, probabilities):
    labels = np.asarray(labels, int)
    probabilities = np.asarray(probabilities, float)
    if probabilities.ndim != 2 or len(labels) != len(probabilities):
        raise ValueError(f"expected labels (N,) and probabilities (N, C); received shapes {labels.shape} and "
                         f"{probabilities.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= probabilities.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {probabilities.shape[1]}); received "
                         f"{labels.min()}..{labels.max()}")
    return labels, probabilities


def bin_indices(values, bins=ECE_BINS):
    """The bin of each value among `bins` equal-width, right-closed bins of [0, 1] (scikit-learn's binning).

    Args:
        values: array-like of shape `(N,)`, float in [0, 1].
        bins: int. Number of bins. Defaults to `15`.

    Returns:
        (N,) int array in `[0, bins)`.
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges[1:-1], np.asarray(values, float))


def reliability_bins(hits, confidences, bins=ECE_BINS):
    """Per bin of `confidences`: its range, film count, observed rate of `hits` and mean confidence.

    Args:
        hits: array-like of shape `(N,)`, bool or 0/1. The event (top label correct, or film of class c).
        confidences: array-like of shape `(N,)`, float in [0, 1]. The predicted probability of the event.
        bins: int. Number of equal-width bins. Defaults to `15`.

    Returns:
        list of `bins` dicts `lower, upper, count, accuracy, confidence`; `accuracy` and `confidence` are NaN
        in an empty bin.
    """
    hits, confidences = np.asarray(hits, float), np.asarray(confidences, float)
    index = bin_indices(confidences, bins)
    rows = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        rows.append({"lower": b / bins, "upper": (b + 1) / bins, "count": count,
                     "accuracy": float(hits[inside].mean()) if count else math.nan,
                     "confidence": float(confidences[inside].mean()) if count else math.nan})
    return rows


def _ece_of(hits, confidences, bins):
    total = len(hits)
    if total == 0:
        return math.nan
    return float(sum(r["count"] / total * abs(r["accuracy"] - r["confidence"])
                     for r in reliability_bins(hits, confidences, bins) if r["count"]))


def expected_calibration_error(labels, probabilities, bins=ECE_BINS):
    """Top-label ECE: `sum_b (n_b / N) |acc_b - conf_b|` over equal-width bins of `max_c p_c`.

    Args:
        labels: array-like of shape `(N,)`, int. True class indices.
        probabilities: array-like of shape `(N, C)`, float. Class probabilities.
        bins: int. Defaults to `15`.

    Returns:
        float in [0, 1]; NaN when N is 0.
    """
    labels, probabilities = _arrays(labels, probabilities)
    return _ece_of(probabilities.argmax(axis=1) == labels, probabilities.max(axis=1, initial=0.0), bins)


def classwise_calibration_error(labels, probabilities, bins=ECE_BINS):
    """Classwise ECE: per class c, the ECE of `p_c` against `label == c`, averaged over the C classes.

    Args:
        labels: array-like of shape `(N,)`, int. True class indices.
        probabilities: array-like of shape `(N, C)`, float. Class probabilities.
        bins: int. Defaults to `15`.

    Returns:
        float in [0, 1]; NaN when N is 0.
    """
    labels, probabilities = _arrays(labels, probabilities)
    return float(np.mean([_ece_of(labels == c, probabilities[:, c], bins) for c in range(probabilities.shape[1])]))


def brier_score(labels, probabilities):
    """Multi-class Brier score: `mean_i sum_c (p_ic - y_ic)^2`, from 0 (perfect) to 2.

    Args:
        labels: array-like of shape `(N,)`, int. True class indices.
        probabilities: array-like of shape `(N, C)`, float. Class probabilities.

    Returns:
        float; NaN when N is 0.
    """
    labels, probabilities = _arrays(labels, probabilities)
    if not len(labels):
        return math.nan
    one_hot = np.eye(probabilities.shape[1])[labels]
    return float(np.mean(np.sum((probabilities - one_hot) ** 2, axis=1)))


def negative_log_likelihood(labels, probabilities):
    """Mean `-log p_true` (natural log), the true class's probability floored at `PROBABILITY_FLOOR`.

    Args:
        labels: array-like of shape `(N,)`, int. True class indices.
        probabilities: array-like of shape `(N, C)`, float. Class probabilities.

    Returns:
        float; NaN when N is 0.
    """
    labels, probabilities = _arrays(labels, probabilities)
    if not len(labels):
        return math.nan
    true = probabilities[np.arange(len(labels)), labels]
    return float(np.mean(-np.log(np.maximum(true, PROBABILITY_FLOOR))))


def calibration_metrics(labels, probabilities, bins=ECE_BINS):
    """ECE, classwise ECE, Brier and NLL of one set of predictions (the columns of calibration.csv).

    Args:
        labels: array-like of shape `(N,)`, int. True class indices.
        probabilities: array-like of shape `(N, C)`, float. Class probabilities.
        bins: int. ECE bins. Defaults to `15`.

    Returns:
        dict `ece, classwise_ece, brier, nll, n`.
    """
    return {"ece": expected_calibration_error(labels, probabilities, bins),
            "classwise_ece": classwise_calibration_error(labels, probabilities, bins),
            "brier": brier_score(labels, probabilities), "nll": negative_log_likelihood(labels, probabilities),
            "n": len(labels)}


def apply_temperature(probabilities, temperature):
    """`softmax(log p / T)` row by row, through `models.calibration.scale_by_temperature` (what serving runs).

    Args:
        probabilities: array-like of shape `(N, C)`, float.
        temperature: float. T > 0.

    Returns:
        (N, C) float64 array.
    """
    from tfflannel.models.calibration import scale_by_temperature

    probabilities = np.asarray(probabilities, np.float32)
    if not len(probabilities):
        return probabilities.astype(float)
    return np.asarray(scale_by_temperature(probabilities, float(temperature)), float)


def fit_temperature(labels, probabilities, bounds=TEMPERATURE_BOUNDS):
    """The temperature T minimising the NLL of `apply_temperature(probabilities, T)`.

    A bounded scalar minimisation (scipy's `minimize_scalar`, method `bounded`) over log T in
    `[log bounds[0], log bounds[1]]`; the NLL of temperature scaling is smooth in log T, so a few dozen
    evaluations find the minimum to about 1e-5 in log T.

    Args:
        labels: array-like of shape `(N,)`, int. True class indices of the calibration films (never test films).
        probabilities: array-like of shape `(N, C)`, float. Their uncalibrated probabilities.
        bounds: (float, float). Smallest and largest T considered. Defaults to `(0.05, 20.0)`.

    Returns:
        float. The fitted T.

    Raises:
        ValueError: no films, or bounds not `0 < low < high`.
    """
    from scipy.optimize import minimize_scalar

    labels, probabilities = _arrays(labels, probabilities)
    if not len(labels):
        raise ValueError("fit_temperature needs at least one film; received none")
    low, high = map(float, bounds)
    if not 0 < low < high:
        raise ValueError(f"temperature bounds must satisfy 0 < low < high. Received: bounds={bounds}.")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(labels, apply_temperature(probabilities, math.exp(log_t))),
        bounds=(math.log(low), math.log(high)), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(result.x))
