"""train-ensemble and evaluate through the CLI on synthetic base-learner runs."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tfflannel import CLASS_NAMES
from tfflannel.cli import main
from tfflannel.learners.infer import PREDICTION_COLUMNS


def _fake_run(path, backbone, workdir, seed, n=30):
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    (path / "run.yaml").write_text(yaml.safe_dump({"kind": "patch", "backbone": backbone, "fold": 1,
                                                    "workdir": str(workdir), "input_size": 64}))
    for role in ("train", "valid", "test"):
        rows = []
        for index in range(n):
            label = index % 4
            p = rng.dirichlet(np.ones(4))
            p[label] += 1.0
            p /= p.sum()
            row = {"image_id": f"{role}{index}", "label": CLASS_NAMES[label]}
            row.update({f"vote_{c}": f"{v:.6f}" for c, v in zip(CLASS_NAMES, p, strict=True)})
            row.update({f"prob_{c}": f"{v:.6f}" for c, v in zip(CLASS_NAMES, p, strict=True)})
            rows.append(row)
        (path / "predictions").mkdir(exist_ok=True)
        with open(path / "predictions" / f"{role}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=PREDICTION_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


def test_train_ensemble_and_evaluate_cli(tmp_path, sample_workdir):
    a, b, ens = tmp_path / "a", tmp_path / "b", tmp_path / "ens"
    _fake_run(a, "mobilenet_v2", sample_workdir, 1)
    _fake_run(b, "resnet50", sample_workdir, 2)
    runner = CliRunner()
    result = runner.invoke(main, ["train-ensemble", "--fold", "1", "--runs", f"{a},{b}", "--out", str(ens),
                                  "--set", "ensemble.epochs=3", "--set", "ensemble.learning_rate=0.01"])
    assert result.exit_code == 0, result.output
    summary = json.loads((ens / "learner_weights.json").read_text())
    assert summary["learners"] == ["patch:mobilenet_v2", "patch:resnet50"]
    assert set(summary["mean_weight_on_test"]) == {"patch:mobilenet_v2", "patch:resnet50"}
    assert abs(sum(summary["alpha"]) - 1.0) < 1e-9
    with open(ens / "predictions" / "test.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 30 and list(rows[0]) == list(PREDICTION_COLUMNS)
    assert all(abs(sum(float(r[f"prob_{c}"]) for c in CLASS_NAMES) - 1) < 1e-4 for r in rows)
    result = runner.invoke(main, ["evaluate", "--runs", str(a), "--runs", f"{b},{ens}", "--out", str(tmp_path / "rep")])
    assert result.exit_code == 0, result.output
    assert "| ensemble:genet(patch:mobilenet_v2+patch:resnet50) |" in (tmp_path / "rep" / "table3.md").read_text()
    wrong_fold = runner.invoke(main, ["train-ensemble", "--fold", "2", "--runs", str(a), "--out", str(tmp_path / "x")])
    assert wrong_fold.exit_code == 2 and "one fold (2)" in wrong_fold.output


def test_report_names_the_manifest_by_a_normalised_relative_path(tmp_path, sample_cls_dir, monkeypatch):
    from tfflannel.data.manifest import prepare_manifest
    from tfflannel.evaluation.report import evaluate_runs

    prepare_manifest(tmp_path / "work", folders=[sample_cls_dir], folds=3, test_size=0.25, progress=False)
    _fake_run(tmp_path / "runs" / "f1" / "a", "mobilenet_v2", "../../../work", 1)   # as run.yaml stores it
    monkeypatch.chdir(tmp_path)
    evaluate_runs(["runs/f1/a"], "rep")
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Manifest `work/manifest.csv`: 40 images" in text and "/../" not in text and "../" not in text
    monkeypatch.chdir(tmp_path / "runs")
    evaluate_runs(["f1/a"], "rep")                           # the manifest outside the working directory: absolute
    assert f"Manifest `{(tmp_path / 'work' / 'manifest.csv').resolve()}`" in (tmp_path / "runs" / "rep" /
                                                                             "report.md").read_text()


def _read(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_temperature_fit_on_held_out_validation_films_and_evaluate_reports_it(tmp_path, sample_workdir):
    """T is fitted on the held-out validation patients only; evaluate applies it and reports intervals and ECE."""
    import keras
    from sklearn.model_selection import GroupShuffleSplit

    from tfflannel.ensemble.train import join_predictions
    from tfflannel.evaluation.calibration import apply_temperature, expected_calibration_error, fit_temperature

    a, b, ens = tmp_path / "a", tmp_path / "b", tmp_path / "ens"
    _fake_run(a, "mobilenet_v2", sample_workdir, 1, n=60)
    _fake_run(b, "resnet50", sample_workdir, 2, n=60)
    runner = CliRunner()
    args = ["train-ensemble", "--fold", "1", "--runs", f"{a},{b}", "--out", str(ens), "--set", "ensemble.epochs=3",
            "--set", "ensemble.learning_rate=0.05"]
    assert runner.invoke(main, args).exit_code == 0
    record = json.loads((ens / "calibration.json").read_text())
    # the oracle: the same hold-out split (ids not in the manifest are their own patients), the saved model
    ids, labels, scores = join_predictions([a, b], "valid")
    _, hold = next(GroupShuffleSplit(1, test_size=0.25, random_state=0).split(scores, labels, ids))
    raw = np.asarray(keras.saving.load_model(ens / "model.keras", compile=False).predict(scores[hold], verbose=0))
    assert record["method"] == "temperature" and record["fit_images"] == len(hold) == 15
    assert record["temperature"] == fit_temperature(labels[hold], raw)
    assert abs(record["temperature"] - 1) > 0.05 and record["nll_after"] < record["nll_before"]
    assert json.loads((ens / "learner_weights.json").read_text())["temperature"] == record["temperature"]

    report = tmp_path / "rep"
    result = runner.invoke(main, ["evaluate", "--runs", f"{a},{ens}", "--out", str(report)])
    assert result.exit_code == 0, result.output
    calibration = {r["run"]: r for r in _read(report / "calibration.csv")}
    assert list(next(iter(calibration.values())))[:5] == ["run", "ece", "classwise_ece", "brier", "nll"]
    test = _read(ens / "predictions" / "test.csv")
    test_labels = [CLASS_NAMES.index(r["label"]) for r in test]
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASS_NAMES] for r in test])
    row = calibration["ensemble:genet(patch:mobilenet_v2+patch:resnet50)"]
    assert float(row["ece"]) == pytest.approx(
        expected_calibration_error(test_labels, apply_temperature(probs, record["temperature"])))
    assert float(row["ece_before"]) == pytest.approx(expected_calibration_error(test_labels, probs))
    assert float(row["temperature"]) == pytest.approx(record["temperature"], rel=1e-3)
    assert calibration["patch:mobilenet_v2"]["temperature"] == "1"
    metrics = _read(report / "metrics.csv")
    assert list(metrics[0])[-2:] == ["ci_low", "ci_high"]
    assert all(float(r["ci_low"]) <= float(r["f1"]) + 1e-9 or r["class"] != "macro" for r in metrics)
    text = (report / "report.md").read_text()
    assert "## Calibration" in text and "2000 resamples" in text and "fitted on 15 validation films" in text
    assert "base learner: no temperature" in text
    assert (report / "plots" / "reliability_patch_mobilenet_v2.png").stat().st_size > 5000
    assert re.search(r"\| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] \|", (report / "table3.md").read_text())

    # calibration: none refits nothing else (the weights are not stale) and records T = 1
    weights = (ens / "model.keras").read_bytes()
    result = runner.invoke(main, args + ["--set", "ensemble.calibration=none"])
    assert result.exit_code == 0, result.output
    assert (ens / "model.keras").read_bytes() == weights
    assert json.loads((ens / "calibration.json").read_text())["temperature"] is None
    # an ensemble made before temperature scaling (no calibration.json) still evaluates, with T = 1 and a note
    (ens / "calibration.json").unlink()
    assert runner.invoke(main, ["evaluate", "--runs", str(ens), "--out", str(report)]).exit_code == 0
    assert "made before temperature scaling" in (report / "report.md").read_text()
    # a record fitted for another model.keras is refused, never applied
    (ens / "calibration.json").write_text(json.dumps({**record, "inputs": {"model_sha256": "0" * 64}}))
    stale = runner.invoke(main, ["evaluate", "--runs", str(ens), "--out", str(report)])
    assert stale.exit_code == 2 and "fitted for another model.keras" in stale.output
    bad = runner.invoke(main, args + ["--set", "ensemble.calibration=platt"])
    assert bad.exit_code == 2 and "ensemble.calibration" in bad.output


def test_several_folds_get_the_interval_of_their_pooled_test_predictions(tmp_path, sample_workdir):
    from tfflannel.evaluation.intervals import classification_intervals
    from tfflannel.evaluation.report import evaluate_runs
    from tfflannel.predictions import read_predictions

    runs = []
    for fold in (1, 2):
        run = tmp_path / f"f{fold}"
        _fake_run(run, "mobilenet_v2", sample_workdir, fold, n=24)
        info = yaml.safe_load((run / "run.yaml").read_text())
        (run / "run.yaml").write_text(yaml.safe_dump({**info, "fold": fold}))
        runs.append(run)
    table = evaluate_runs(runs, tmp_path / "rep", n_resamples=300, seed=5)
    tables = [read_predictions(r, "test") for r in runs]
    # the same test films in both folds (ids not in the manifest: each its own patient, drawn with both its rows)
    expected = classification_intervals(np.concatenate([t.labels for t in tables]),
                                        np.concatenate([t.probs for t in tables]),
                                        [i for t in tables for i in t.image_ids], 300, 5)
    macro = next(r for r in table if r["class"] == "macro")
    assert macro["folds"] == 2 and (macro["ci_low"], macro["ci_high"]) == expected["macro_f1"]
    per_fold = [r for r in _read(tmp_path / "rep" / "metrics.csv") if r["class"] == "macro"]
    own = classification_intervals(tables[0].labels, tables[0].probs, tables[0].image_ids, 300, 5)["macro_f1"]
    assert (float(per_fold[0]["ci_low"]), float(per_fold[0]["ci_high"])) == pytest.approx(own)
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "pooled test predictions of each fold's run" in report and "300 resamples" in report
    assert "not in the manifest resampled as their own patients" in report
    runs_json = json.loads((tmp_path / "rep" / "runs.json").read_text())
    assert runs_json["bootstrap"] == {"n_resamples": 300, "seed": 5, "level": 0.95, "unit": "group_id"}


DEMO_LEARNERS = Path(__file__).parent.parent / "fixtures" / "demo_ensemble"


def _demo_member_runs(root, workdir):
    """The demo's two patch learners as runs: their real valid/test predictions (fixtures/demo_ensemble)."""
    import shutil

    runs = []
    for source in sorted(DEMO_LEARNERS.glob("patch_*")):
        run = root / source.name
        shutil.copytree(source / "predictions", run / "predictions")
        (run / "run.yaml").write_text(yaml.safe_dump({"kind": "patch", "backbone": source.name[len("patch_"):],
                                                      "fold": 1, "workdir": str(workdir), "input_size": 96}))
        runs.append(run)
    return runs


def test_the_demo_ensemble_learns_from_the_demo_learners(tmp_path, sample_cls_dir):
    """Issue 25.4 on the demo's own patch-learner scores (fixtures/demo_ensemble): with the demo config the GENet
    weights move far from their initial ~0.1 (measured +0.96 and -0.39), the last epoch is kept, and the test outputs
    differ between films (std over films 0.013 per class). With the old 4-film hold-out the kept checkpoint was
    epoch 0 and every output was 0.247-0.257 (std 0.002)."""
    from tfflannel.config import load_config, packaged_config
    from tfflannel.data.manifest import prepare_manifest
    from tfflannel.ensemble.train import train_ensemble
    from tfflannel.predictions import read_predictions
    from tfflannel.resume_state import read_fit_state

    prepare_manifest(tmp_path / "work", folders=[sample_cls_dir], folds=3, test_size=0.25, progress=False)
    runs = _demo_member_runs(tmp_path, tmp_path / "work")
    config = load_config(packaged_config("demo.yaml"))
    summary = train_ensemble(config, runs, tmp_path / "ens", fold=1, progress=False)
    weights = summary["mean_weight_on_test"]
    assert read_fit_state(tmp_path / "ens").best_epoch == config.ensemble.epochs - 1
    assert max(abs(w) for w in weights.values()) > 0.5, weights
    probabilities = read_predictions(tmp_path / "ens", "test").scores("prob")
    assert probabilities.std(axis=0).mean() > 0.006, probabilities        # near-uniform outputs had 0.002
