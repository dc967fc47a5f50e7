"""The audit's parts against independent oracles: conditions, AUC, bootstrap, probe, rule, strata, config."""

import numpy as np
import pytest
import tensorflow as tf
from sklearn.metrics import f1_score, roc_auc_score

from tfflannel import CLASS_NAMES
from tfflannel.audit.probe import attribute_probe, roc_auc
from tfflannel.audit.verdict import (
    chance_f1,
    condition_metrics,
    shortcut_classes,
    single_source_classes,
    strata_rows,
)
from tfflannel.config import load_config
from tfflannel.errors import ConfigError
from tfflannel.film_pipeline import ViewSettings, global_view, global_view_mask, masked_view


def _film_and_mask(seed=0):
    rng = np.random.default_rng(seed)
    film = rng.integers(0, 256, (90, 120), dtype=np.uint8)
    square = np.zeros((32, 32), bool)
    square[6:18, 4:12] = square[6:18, 16:26] = True
    return film, square


def test_conditions_split_the_view_into_lungs_and_the_rest():
    film, square = _film_and_mask()
    settings = ViewSettings(size=64, min_lung_fraction=0.0, max_lung_fraction=1.0)
    views = {c: masked_view(tf.constant(film), tf.constant(square), settings, condition=c)
             for c in ("normal", "lungs_only", "lungs_removed")}
    mask = views["normal"]["mask"].numpy()
    full = views["normal"]["image"].numpy().astype(int)
    assert 0 < mask.sum() < mask.size
    np.testing.assert_array_equal(views["lungs_only"]["image"].numpy(), full * mask)              # the cached view
    np.testing.assert_array_equal(views["lungs_removed"]["image"].numpy(), full * (1 - mask))
    np.testing.assert_array_equal(masked_view(tf.constant(film), tf.constant(square), settings)["image"].numpy(),
                                  full * mask)                                                    # default unchanged


def test_global_view_conditions_use_the_view_mask_on_the_letterboxed_square():
    film, square = _film_and_mask(1)
    mask = masked_view(tf.constant(film), tf.constant(square),
                       ViewSettings(size=64, min_lung_fraction=0.0, max_lung_fraction=1.0))["mask"]
    normal = global_view(tf.constant(film), 48, 40).numpy()[..., 0]
    lung = global_view_mask(mask, 48, 40).numpy()
    assert 0 < lung.sum() < lung.size
    only = global_view(tf.constant(film), 48, 40, mask, "lungs_only").numpy()[..., 0]
    removed = global_view(tf.constant(film), 48, 40, mask, "lungs_removed").numpy()[..., 0]
    np.testing.assert_array_equal(only, normal * lung)
    np.testing.assert_array_equal(removed, normal * (1 - lung))
    with pytest.raises(ValueError, match="condition"):
        global_view(tf.constant(film), 48, 40, mask, "lungs")


def test_roc_auc_equals_sklearn_binary_with_ties_and_one_vs_rest():
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) + 0.3 * targets, 1)                     # many ties
    probabilities = np.stack([1 - scores, scores], axis=1)
    assert roc_auc(targets, probabilities) == pytest.approx(roc_auc_score(targets, scores), abs=1e-12)
    three = rng.integers(0, 3, 150)
    logits = rng.normal(size=(150, 3)) + np.eye(3)[three]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert roc_auc(three, probs) == pytest.approx(roc_auc_score(three, probs, multi_class="ovr", average="macro"),
                                                  abs=1e-12)
    assert np.isnan(roc_auc(np.zeros(5, int), probabilities[:5]))


def test_probe_reads_a_source_carried_by_the_features_and_not_one_that_is_not():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{i}" for i in range(60)], 2)
    source = np.where(np.arange(120) % 4 < 2, "ccx", "kcx")                    # constant within a group
    noise = rng.normal(size=(120, 6))
    carried = noise + np.where(source == "ccx", 2.0, 0.0)[:, None]
    result, reason = attribute_probe(carried, source, groups, resamples=200)
    assert reason == "" and result["auc"] > 0.95 and result["ci_low"] > 0.85 and result["n"] == 120
    blind, _ = attribute_probe(noise, source, groups, resamples=200)
    assert 0.25 < blind["auc"] < 0.75 and blind["ci_low"] < 0.5 < blind["ci_high"]
    none, why = attribute_probe(noise, ["ccx"] * 120, groups)
    assert none is None and "only one value" in why
    unknown, why = attribute_probe(noise, ["unknown"] * 60 + ["1-5"] * 60, groups)
    assert unknown is None and "1-5" in why


def test_chance_f1_is_the_f1_of_always_predicting_the_class():
    labels = np.array([0] * 3 + [1] * 9)
    assert chance_f1(3 / 12) == pytest.approx(f1_score(labels == 0, np.ones(12, bool)))


def _metrics(f1):
    return {"f1": dict(zip(CLASS_NAMES, f1, strict=True))}


def test_shortcut_rule_per_class_at_its_thresholds():
    labels = np.repeat(np.arange(4), 5)                                        # p = 0.25: chance F1 0.4
    normal = _metrics([0.9, 0.9, 0.5, 0.49])
    removed = _metrics([0.72, 0.71, 0.5, 0.49])
    flagged = shortcut_classes(labels, {"normal": normal, "lungs_removed": removed})
    # covid19: 0.72 >= 0.8 * 0.9; viral: 0.71 < 0.72; bacterial: 0.5 >= 0.4 + 0.1 and kept; normal: 0.49 < 0.5
    assert flagged == ["covid19", "bacterial_pneumonia"]
    assert shortcut_classes(labels, {"normal": normal, "lungs_removed": removed}, kept_share=0.9,
                            min_gain=0.2) == []
    absent = np.repeat([1, 2, 3], 5)
    assert "covid19" not in shortcut_classes(absent, {"normal": normal, "lungs_removed": removed})


def test_condition_metrics_and_strata_match_sklearn():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 40)
    scores = rng.random((40, 4)) + np.eye(4)[labels] * 0.5
    m = condition_metrics(labels, scores)
    assert m["n"] == 40 and set(m["f1"]) == set(CLASS_NAMES)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, scores.argmax(1), average="macro", labels=range(4)))
    rows = [{"source": "ccx" if i % 3 == 0 else "kcx", "view": "AP", "age_group": "", "label": CLASS_NAMES[y]}
            for i, y in enumerate(labels)]
    strata = strata_rows("run", labels, scores, rows)
    assert {(s["by"], s["value"]) for s in strata} == {("source", "ccx"), ("source", "kcx"), ("view", "AP")}
    ccx = next(s for s in strata if s["value"] == "ccx")
    keep = np.arange(40) % 3 == 0
    assert ccx["n"] == keep.sum() and sum(ccx["counts"].values()) == keep.sum()
    assert ccx["macro_f1"] == pytest.approx(f1_score(labels[keep], scores[keep].argmax(1), average="macro",
                                                     labels=range(4), zero_division=0))
    assert single_source_classes([{"label": "covid19", "source": "ccx"}, {"label": "normal", "source": "ccx"},
                                  {"label": "normal", "source": "kcx"}]) == {"covid19": "ccx"}


@pytest.mark.parametrize("item", ["audit.kept_share=0", "audit.kept_share=1.5", "audit.min_gain=1",
                                  "audit.min_gain=-0.1", "audit.probe_folds=1", "audit.bootstrap_resamples=0"])
def test_audit_thresholds_are_validated_at_config_load(item):
    with pytest.raises(ConfigError, match=item.split("=")[0].split(".")[1]):
        load_config(overrides=[item])


def _m(value):
    return {"macro_f1": value, "accuracy": value, "f1": dict.fromkeys(CLASS_NAMES, value), "n": 4}


def test_audit_files_state_the_rule_write_null_for_nan_and_append_once_to_a_report(tmp_path):
    import json

    from tfflannel.audit.report import append_audit_section, write_audit

    learner = {"run": "global:x", "mode": "global", "dir": "r",
               "conditions": {"normal": _m(0.9), "lungs_only": _m(0.5), "lungs_removed": _m(0.85)},
               "lung_attention": float("nan"), "source_probe": None, "view_probe": None, "age_group_probe": None,
               "probe_notes": {"source": "only one value present (ccx) among the films scored"},
               "shortcut": True, "shortcut_classes": ["covid19"]}
    result = {"partition": "test", "learners": [learner], "ensemble": None,
              "strata": [{"run": "global:x", "by": "source", "value": "ccx", "n": 4, "macro_f1": 0.9,
                          "accuracy": 0.9, "counts": {"covid19": 4}}],
              "rule": {"kept_share": 0.75, "min_gain": 0.2}, "k": 8, "seed": 0,
              "single_source_classes": {"covid19": "ccx"}, "n": 4}
    write_audit(result, tmp_path)
    stored = json.loads((tmp_path / "audit.json").read_text())
    assert stored["learners"][0]["lung_attention"] is None and stored["learners"][0]["source_probe"] is None
    text = (tmp_path / "audit.md").read_text()
    assert "at least 0.75 of its F1 on `normal`" in text and "at least 0.2 above" in text
    assert "| global:x | global | 0.900 | 0.500 | 0.850 | n/a | n/a (only one value present" in text
    assert "every `covid19` film comes from `ccx`" in text and (tmp_path / "plots" / "audit_conditions.png").is_file()
    report = tmp_path / "report.md"
    report.write_text("# evaluation\n\nTable 3 here.\n")
    append_audit_section(report, tmp_path / "audit.md")
    append_audit_section(report, tmp_path / "audit.md")
    merged = report.read_text()
    assert merged.startswith("# evaluation\n\nTable 3 here.\n\n## Does it look at the lungs?")
    assert merged.count("## Does it look at the lungs?") == 1 and "\n### Rule\n" in merged
    # reproduce: one titled section per fold's audit; a rerun of one replaces only its own section
    titled = tmp_path / "report_folds.md"
    titled.write_text("# evaluation\n")
    for title in ("audit_f1", "audit_f2", "audit_f1"):
        append_audit_section(titled, tmp_path / "audit.md", title)
    text = titled.read_text()
    assert text.count("## Does it look at the lungs?") == 2
    assert text.index(" (audit_f2)\n") < text.index(" (audit_f1)\n")       # f1's rerun replaced its old section
    assert text.count("\n### Rule\n") == 2
