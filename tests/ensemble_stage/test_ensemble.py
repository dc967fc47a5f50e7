"""GENet exactly, the focal loss against NumPy, and predictions joined by image id."""

import csv
import random

import keras
import numpy as np
import pytest

from tfflannel import CLASS_NAMES
from tfflannel.ensemble.train import JoinError, join_predictions
from tfflannel.learners.infer import PREDICTION_COLUMNS
from tfflannel.models.ensemble import build_ensemble, inverse_frequency_alpha


def test_genet_has_2005_trainable_parameters():
    model = build_ensemble("genet", 5, 4)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 2005


def test_genet_output_equals_hand_computation():
    model = build_ensemble("genet", 5, 4)
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(400, 5)).astype(np.float32) * 0.05, rng.normal(size=5).astype(np.float32)
    model.get_layer("weight_dense").set_weights([kernel, bias])
    f = rng.random((3, 20)).astype(np.float32)
    outer = np.einsum("bi,bj->bij", f, f).reshape(3, 400)
    w = np.tanh(outer @ kernel + bias)
    logits = np.einsum("bl,blc->bc", w, f.reshape(3, 5, 4))
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(model(f)), expected, rtol=1e-5, atol=1e-6)


def test_variants_and_any_number_of_learners():
    flannel = build_ensemble("flannel", 2, 4)
    weights = keras.Model(flannel.input, flannel.get_layer("learner_weights").output)(np.random.rand(4, 8))
    np.testing.assert_allclose(np.asarray(weights).sum(axis=1), 1.0, atol=1e-6)
    mlp = build_ensemble("mlp", 5, 4)
    assert sum(int(np.prod(w.shape)) for w in mlp.trainable_weights) == 20 * 4 + 4
    with pytest.raises(ValueError, match="kind must be one of"):
        build_ensemble("stacking")


def numpy_focal(y_true, y_pred, alpha, gamma):
    p = np.clip(y_pred / y_pred.sum(axis=1, keepdims=True), 1e-7, 1 - 1e-7)
    return np.mean(np.sum(-np.asarray(alpha) * y_true * (1 - p) ** gamma * np.log(p), axis=1))


@pytest.mark.parametrize("gamma", [0.0, 2.0, 10.0])
def test_focal_loss_with_per_class_alpha_matches_numpy(gamma):
    rng = np.random.default_rng(int(gamma))
    logits = rng.normal(size=(16, 4))
    y_pred = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    y_true = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 16)]
    alpha = inverse_frequency_alpha([0, 0, 0, 1, 2, 2, 3], 4)
    loss = keras.losses.CategoricalFocalCrossentropy(alpha=alpha, gamma=gamma)
    assert float(loss(y_true, y_pred)) == pytest.approx(numpy_focal(y_true, y_pred, alpha, gamma), rel=1e-4)


def test_alpha_is_normalised_inverse_frequency():
    alpha = inverse_frequency_alpha([0, 0, 0, 0, 1, 1, 2, 3], 4)
    assert sum(alpha) == pytest.approx(1.0)
    assert alpha[0] == pytest.approx((1 / 4) / (1 / 4 + 1 / 2 + 1 + 1))
    original = [1000 / 4, 1000 / 2, 1000, 1000]
    np.testing.assert_allclose(np.array(original) / sum(original), alpha)


def _write_predictions(run_dir, rows, role="valid"):
    (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
    with open(run_dir / "predictions" / f"{role}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=PREDICTION_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _rows(seed, ids):
    rng = np.random.default_rng(seed)
    rows = []
    for image_id in ids:
        p = rng.dirichlet(np.ones(4))
        row = {"image_id": image_id, "label": CLASS_NAMES[int(image_id[-1]) % 4]}
        row.update({f"vote_{c}": f"{v:.6f}" for c, v in zip(CLASS_NAMES, p, strict=True)})
        row.update({f"prob_{c}": f"{v:.6f}" for c, v in zip(CLASS_NAMES, p, strict=True)})
        rows.append(row)
    return rows


def test_join_by_id_is_independent_of_row_order(tmp_path):
    ids = [f"img{i}" for i in range(12)]
    a_rows, b_rows = _rows(1, ids), _rows(2, ids)
    _write_predictions(tmp_path / "a", a_rows)
    _write_predictions(tmp_path / "b", b_rows)
    first = join_predictions([tmp_path / "a", tmp_path / "b"], "valid")
    random.Random(0).shuffle(b_rows)
    random.Random(1).shuffle(a_rows)
    _write_predictions(tmp_path / "a", a_rows)
    _write_predictions(tmp_path / "b", b_rows)
    second = join_predictions([tmp_path / "a", tmp_path / "b"], "valid")
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    np.testing.assert_array_equal(first[2], second[2])
    assert first[2].shape == (12, 8)


def test_missing_or_extra_id_is_named(tmp_path):
    ids = [f"img{i}" for i in range(6)]
    _write_predictions(tmp_path / "a", _rows(1, ids))
    _write_predictions(tmp_path / "b", _rows(2, ids[:-1] + ["stranger7"]))
    with pytest.raises(JoinError, match=r"missing \['img5'\].*extra \['stranger7'\]"):
        join_predictions([tmp_path / "a", tmp_path / "b"], "valid")
