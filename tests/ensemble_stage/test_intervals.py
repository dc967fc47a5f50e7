"""Patient-bootstrap intervals against an independent NumPy/scikit-learn bootstrap written here."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from tfflannel import CLASS_NAMES
from tfflannel.evaluation.intervals import bootstrap_interval, classification_intervals, draw_group_resamples
from tfflannel.evaluation.metrics import classification_metrics


def _synthetic(seed=0, patients=40):
    rng = np.random.default_rng(seed)
    films = rng.integers(1, 4, patients)                     # 1-3 films per patient
    groups = np.repeat([f"p{i:03d}" for i in range(patients)], films)
    labels = np.repeat(rng.integers(0, 4, patients), films)  # a patient's films share the label
    scores = rng.dirichlet(np.ones(4), len(labels))
    scores[np.arange(len(labels)), labels] += rng.uniform(0, 0.8, len(labels))   # better than chance
    order = rng.permutation(len(labels))                     # films of a patient not adjacent
    return labels[order], scores[order], groups[order]


def _numpy_bootstrap(labels, scores, groups, n_resamples, seed):
    """Resample the sorted distinct patients with default_rng(seed).integers(0, G, (B, G)); sklearn per resample."""
    unique = np.unique(groups)
    draws = np.random.default_rng(seed).integers(0, len(unique), size=(n_resamples, len(unique)))
    predicted = scores.argmax(axis=1)
    f1s, macro, accuracy = [], [], []
    for row in draws:
        index = np.concatenate([np.flatnonzero(groups == unique[g]) for g in row])
        per_class = f1_score(labels[index], predicted[index], labels=range(4), average=None, zero_division=0)
        f1s.append(per_class)
        macro.append(per_class.mean())
        accuracy.append(accuracy_score(labels[index], predicted[index]))
    return np.array(f1s), np.array(macro), np.array(accuracy)


def test_intervals_equal_an_independent_numpy_bootstrap():
    labels, scores, groups = _synthetic()
    result = classification_intervals(labels, scores, groups, n_resamples=200, seed=7)
    f1s, macro, accuracy = _numpy_bootstrap(labels, scores, groups, 200, 7)
    for c, name in enumerate(CLASS_NAMES):
        assert result["f1"][name] == pytest.approx(tuple(np.percentile(f1s[:, c], [2.5, 97.5])), abs=1e-12)
    assert result["macro_f1"] == pytest.approx(tuple(np.percentile(macro, [2.5, 97.5])), abs=1e-12)
    assert result["accuracy"] == pytest.approx(tuple(np.percentile(accuracy, [2.5, 97.5])), abs=1e-12)
    assert result["n_resamples"] == 200 and result["seed"] == 7 and result["groups"] == 40
    point = classification_metrics(labels, scores)
    low, high = result["macro_f1"]
    assert low < point["macro_f1"] < high and high - low > 0.05     # a real spread around the point estimate
    # another seed gives other draws (the seed is used), the same seed the same interval (it is fixed)
    assert classification_intervals(labels, scores, groups, 200, seed=8)["macro_f1"] != result["macro_f1"]
    assert classification_intervals(labels, scores, groups, 200, seed=7) == result


def test_films_of_one_patient_are_drawn_together():
    labels, scores, groups = _synthetic(seed=1, patients=12)
    film_group, counts = draw_group_resamples(groups, n_resamples=50, seed=3)
    assert counts.shape == (50, 12) and (counts.sum(axis=1) == 12).all()
    assert (np.unique(groups)[film_group] == groups).all()
    # a film-level bootstrap of the same data would give another interval: the grouping matters
    film_level = classification_intervals(labels, scores, np.arange(len(labels)), 400, seed=0)
    assert film_level["macro_f1"] != classification_intervals(labels, scores, groups, 400, seed=0)["macro_f1"]


def test_one_patient_gives_a_zero_width_interval_and_an_absent_class_counts_zero():
    labels = np.array([0, 0, 1])
    scores = np.eye(4)[[0, 1, 1]]
    result = classification_intervals(labels, scores, ["a", "a", "a"], n_resamples=20, seed=0)
    point = classification_metrics(labels, scores)
    assert result["macro_f1"] == pytest.approx((point["macro_f1"],) * 2)
    assert result["accuracy"] == pytest.approx((2 / 3, 2 / 3))
    # classes 2 and 3: never present, never predicted: F1 0 / 0 counted as 0 in every resample (zero_division=0)
    assert result["f1"]["bacterial_pneumonia"] == (0.0, 0.0) and result["absent"]["normal"] == 20
    assert result["absent"]["covid19"] == 0


def test_a_resample_without_a_class_counts_its_f1_as_zero():
    # two patients: one with class 0 only, one with class 1 only; resamples drawing one patient twice lack a class
    labels, scores = np.array([0, 1]), np.eye(4)[[0, 1]]
    result = classification_intervals(labels, scores, ["a", "b"], n_resamples=200, seed=0)
    assert 0 < result["absent"]["covid19"] < 200
    assert result["f1"]["covid19"][0] == 0.0 and result["f1"]["covid19"][1] == 1.0
    _, counts = draw_group_resamples(["a", "b"], 200, 0)
    expected_macro = np.where(counts[:, 0] == 1, 0.5, 0.25)   # both classes present: (1+1)/4, else 1/4
    assert result["macro_f1"] == pytest.approx(tuple(np.percentile(expected_macro, [2.5, 97.5])))


def test_generic_bootstrap_interval_skips_undefined_resamples():
    labels, scores, groups = _synthetic(seed=2, patients=8)
    truth = (labels == 0).astype(int)

    def auc(index):
        return roc_auc_score(truth[index], scores[index, 0]) if 0 < truth[index].sum() < len(index) else np.nan

    result = bootstrap_interval(auc, groups, n_resamples=100, seed=1)
    unique = np.unique(groups)
    draws = np.random.default_rng(1).integers(0, len(unique), size=(100, len(unique)))
    values = [auc(np.concatenate([np.flatnonzero(groups == unique[g]) for g in row])) for row in draws]
    defined = [v for v in values if not np.isnan(v)]
    assert result["n_valid"] == len(defined) < 100
    assert (result["low"], result["high"]) == pytest.approx(tuple(np.percentile(defined, [2.5, 97.5])))
    with pytest.raises(ValueError, match="at least one film"):
        bootstrap_interval(auc, [], n_resamples=10)
