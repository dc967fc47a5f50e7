"""What a learner's features carry: can a film's source (view, age group) be read off them?

`attribute_probe` fits scikit-learn's logistic regression on the penultimate features of the films scored,
with patient-grouped cross-validation (`StratifiedGroupKFold`: one patient group never in both a training
and a held-out fold), and scores the out-of-fold probabilities by ROC AUC (one-vs-rest macro average for
more than two values) with a patient-bootstrap percentile interval (`evaluation.intervals.bootstrap_interval`,
the one `evaluate` uses).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tfflannel.evaluation.intervals import bootstrap_interval


def binary_auc(positive, scores):
    """ROC AUC of `scores` for the boolean `positive` by the rank-sum (Mann-Whitney) formula, ties counted half.

    Equal to scikit-learn's `roc_auc_score` (tested), without its per-call overhead (the bootstrap calls it
    thousands of times). NaN when one side is empty.
    """
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    count, negatives = int(positive.sum()), int((~positive).sum())
    if count == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - count * (count + 1) / 2.0) / (count * negatives))


def roc_auc(targets, probabilities, indices=None):
    """ROC AUC of `probabilities` (N, V) for `targets` in [0, V): binary, or one-vs-rest macro; NaN if undefined."""
    targets, probabilities = np.asarray(targets), np.asarray(probabilities, float)
    if indices is not None:
        targets, probabilities = targets[indices], probabilities[indices]
    if probabilities.shape[1] == 2:
        return binary_auc(targets == 1, probabilities[:, 1])
    values = [binary_auc(targets == v, probabilities[:, v]) for v in range(probabilities.shape[1])]
    return float(np.mean(values))


def attribute_probe(features, values, groups, folds=5, seed=0, resamples=2000):
    """How well an attribute (source, view, age group) is predicted from features, out of fold.

    Films whose value is empty or `unknown` are left out. The number of folds is lowered to the smallest
    number of patient groups of any value (at least 2).

    Args:
        features: (N, D) float array. Penultimate features.
        values: sequence of str. The attribute of each film.
        groups: sequence of str. The patient group (`group_id`) of each film.
        folds: int. Cross-validation folds. Defaults to `5`.
        seed: int. Seeds the fold assignment and the bootstrap. Defaults to `0`.
        resamples: int. Patient-bootstrap resamples of the AUC. Defaults to `2000`.

    Returns:
        tuple: `(result, reason)`: `result` is `{"auc", "ci_low", "ci_high", "n", "folds", "values"}` or `None`,
        and `reason` says why it is `None` (`""` otherwise).
    """
    values = np.asarray([str(v) for v in values])
    known = np.flatnonzero((values != "") & (values != "unknown"))
    features, values, groups = np.asarray(features, float)[known], values[known], np.asarray(groups)[known]
    names = sorted(set(values))
    if len(names) < 2:
        return None, f"only one value present ({names[0] if names else 'none known'}) among the films scored"
    groups_per_value = min(len(set(groups[values == name])) for name in names)
    splits = min(int(folds), groups_per_value)
    if splits < 2:
        counts = dict(zip(*np.unique(values, return_counts=True), strict=True))
        return None, f"a value has patients of only one group ({counts})"
    targets = np.array([names.index(v) for v in values])
    out_of_fold = np.zeros((len(values), len(names)))
    splitter = StratifiedGroupKFold(n_splits=splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)        # "least populated class has only N members"
        for train, held in splitter.split(features, targets, groups):
            present = np.unique(targets[train])
            if len(present) < 2:         # a fold whose training part holds one value: predict it
                out_of_fold[np.ix_(held, present)] = 1.0
                continue
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            model.fit(features[train], targets[train])
            out_of_fold[np.ix_(held, present)] = model.predict_proba(features[held])
    auc = roc_auc(targets, out_of_fold)
    interval = bootstrap_interval(lambda idx: roc_auc(targets, out_of_fold, idx), groups, resamples, seed)
    return {"auc": auc, "ci_low": interval["low"], "ci_high": interval["high"], "n": int(len(values)),
            "folds": int(splits), "values": names, "resamples_defined": interval["n_valid"]}, ""
