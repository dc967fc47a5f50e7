"""Calibration metrics against NumPy formulas and scikit-learn; temperature scaling and its fit."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss

from tfflannel.evaluation.calibration import (
    apply_temperature,
    bin_indices,
    brier_score,
    calibration_metrics,
    classwise_calibration_error,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from tfflannel.models.calibration import TemperatureScaling


def _predictions(seed=0, n=300, sharpness=3.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), labels] += 1.0
    logits *= sharpness                                   # overconfident: sharper than the truth
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def _sklearn_ece(hits, confidences, bins=15):
    """ECE from calibration_curve's per-bin rates, weighted by the bin counts of the same (right-closed) bins."""
    prob_true, prob_pred = calibration_curve(hits, confidences, n_bins=bins, strategy="uniform")
    counts = np.bincount(bin_indices(confidences, bins), minlength=bins)
    counts = counts[counts > 0]
    return float(np.sum(counts / len(hits) * np.abs(prob_true - prob_pred)))


def test_ece_equals_numpy_formula_and_sklearn_calibration_curve():
    labels, probabilities = _predictions()
    confidence, hits = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    # NumPy formula: 15 equal-width bins of the top-label probability
    edges = np.linspace(0, 1, 16)
    index = np.clip(np.digitize(confidence, edges, right=True) - 1, 0, 14)
    expected = sum(np.sum(index == b) / len(labels) * abs(hits[index == b].mean() - confidence[index == b].mean())
                   for b in range(15) if np.any(index == b))
    assert expected_calibration_error(labels, probabilities) == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(labels, probabilities) == pytest.approx(_sklearn_ece(hits, confidence))
    assert expected_calibration_error(labels, probabilities) > 0.1       # this model is overconfident


def test_classwise_ece_brier_nll_equal_their_oracles():
    labels, probabilities = _predictions(seed=1)
    classwise = np.mean([_sklearn_ece(labels == c, probabilities[:, c]) for c in range(4)])
    assert classwise_calibration_error(labels, probabilities) == pytest.approx(classwise)
    one_hot = np.eye(4)[labels]
    assert brier_score(labels, probabilities) == pytest.approx(np.mean(np.sum((probabilities - one_hot) ** 2, 1)))
    assert negative_log_likelihood(labels, probabilities) == pytest.approx(
        log_loss(labels, probabilities, labels=range(4)))
    result = calibration_metrics(labels, probabilities)
    assert set(result) == {"ece", "classwise_ece", "brier", "nll", "n"} and result["n"] == 300


def test_perfect_and_worst_predictions():
    labels = np.array([0, 1, 2, 3])
    perfect, wrong = np.eye(4)[labels], np.eye(4)[[1, 2, 3, 0]]
    assert expected_calibration_error(labels, perfect) == 0 and brier_score(labels, perfect) == 0
    assert expected_calibration_error(labels, wrong) == 1 and brier_score(labels, wrong) == 2
    assert negative_log_likelihood(labels, wrong) == pytest.approx(-np.log(1e-12))      # floored, finite
    with pytest.raises(ValueError, match="class indices"):
        brier_score([4], perfect[:1])


def test_temperature_scaling_is_softmax_of_log_p_over_t_and_keeps_the_argmax():
    _, probabilities = _predictions(n=20)
    for temperature in (0.5, 1.0, 2.5):
        logits = np.log(probabilities) / temperature
        expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        got = apply_temperature(probabilities, temperature)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert (got.argmax(axis=1) == probabilities.argmax(axis=1)).all()
        layer = np.asarray(TemperatureScaling(temperature)(probabilities.astype("float32")))
        np.testing.assert_array_equal(layer, got.astype("float32"))
    with pytest.raises(ValueError, match="positive finite"):
        TemperatureScaling(0.0)


def test_fitted_temperature_minimises_validation_nll_as_a_brute_force_grid_does():
    labels, probabilities = _predictions(seed=3)
    fitted = fit_temperature(labels, probabilities)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    nll = [negative_log_likelihood(labels, np.exp(np.log(probabilities) / t)
                                   / np.exp(np.log(probabilities) / t).sum(1, keepdims=True)) for t in grid]
    best = grid[int(np.argmin(nll))]
    assert fitted == pytest.approx(best, rel=0.01)
    assert fitted > 1.5                                   # overconfident predictions are softened
    before = negative_log_likelihood(labels, probabilities)
    after = negative_log_likelihood(labels, apply_temperature(probabilities, fitted))
    assert after < before - 0.1 and after <= min(nll) + 1e-4
    assert expected_calibration_error(labels, apply_temperature(probabilities, fitted)) < \
        expected_calibration_error(labels, probabilities)
    with pytest.raises(ValueError, match="at least one film"):
        fit_temperature([], np.zeros((0, 4)))


def test_served_temperature_of_new_old_and_retrained_ensembles(tmp_path):
    """The recorded T is served; an ensemble without one is served with T = 1 and a warning; a stale one refused."""
    import json

    import yaml

    from tfflannel.ensemble.calibration import calibrate_ensemble, run_temperature
    from tfflannel.errors import InputError
    from tfflannel.serving.builder import served_temperature

    run = tmp_path / "ens"
    run.mkdir()
    (run / "run.yaml").write_text(yaml.safe_dump({"kind": "ensemble", "fold": 1, "workdir": "."}))
    (run / "model.keras").write_bytes(b"weights one")
    with pytest.warns(UserWarning, match="made before temperature scaling"):
        assert served_temperature(run) is None
    labels, probabilities = _predictions(seed=4, n=80)
    record = calibrate_ensemble(run, [], "temperature", labels, probabilities, "test films of this test")
    assert record["temperature"] == fit_temperature(labels, probabilities) == served_temperature(run)
    assert run_temperature(run).fitted and json.loads((run / "calibration.json").read_text()) == record
    calibrate_ensemble(run, [], "none", labels, probabilities, "unused")
    assert served_temperature(run) is None and "calibration: none" in run_temperature(run).note
    calibrate_ensemble(run, [], "temperature", labels, probabilities, "again")
    (run / "model.keras").write_bytes(b"weights two")              # trained again since: the record is stale
    with pytest.raises(InputError, match="fitted for another model.keras"):
        served_temperature(run)
