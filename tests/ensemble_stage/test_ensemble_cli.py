"""train-ensemble and evaluate through the CLI on synthetic base-learner runs."""

import csv
import json

import numpy as np
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
