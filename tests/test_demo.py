"""A reduced `demo` end to end: every stage runs on the bundled sample and the report is complete."""

import csv
import json

import pytest
from click.testing import CliRunner

from tfflannel.cli import main


@pytest.mark.slow
def test_reduced_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, [
        "demo", "--out", str(out),
        "--set", "demo.backbones=[test_cnn]", "--set", "demo.patch_epochs=1", "--set", "demo.global_epochs=1",
        "--set", "patched.patch_size=64", "--set", "global_learner.resize=80", "--set", "global_learner.crop_size=64",
        "--set", "inference.k=4", "--set", "ensemble.epochs=3",
    ])
    assert result.exit_code == 0, result.output
    report = out / "report"
    text = (report / "report.md").read_text()
    assert "RESEARCH USE ONLY" in text and "Source confound" in text and "Per source" in text
    with open(report / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["run", "fold", "class", "precision", "recall", "f1", "support", "ci_low", "ci_high"]
    runs = {r["run"] for r in rows}
    assert {"patch:test_cnn", "global:test_cnn"} <= runs and sum(r.startswith("ensemble:") for r in runs) == 2
    assert all(0.0 <= float(r["f1"]) <= 1.0 for r in rows)
    with open(report / "table3.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 * 6          # 4 runs x (4 classes, macro, accuracy)
    assert "## Calibration" in text and "patient-bootstrap" in text and "ECE before T" in text
    with open(report / "calibration.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    plots = list((report / "plots").glob("*.png")) + list((report / "audit_f1" / "plots").glob("*.png"))
    assert len(plots) == 1 + 3 * 4 + 1 and all(p.stat().st_size > 5000 for p in plots)     # + audit_conditions
    audit = json.loads((report / "audit_f1" / "audit.json").read_text())
    assert [learner["run"] for learner in audit["learners"]] == ["patch:test_cnn", "global:test_cnn"]
    assert audit["ensemble"]["run"].startswith("ensemble:") and audit["partition"] == "test"
    assert "## Does it look at the lungs?" in text and "shortcut class" in text
    assert "report ->" in result.output and "RESEARCH USE ONLY" in result.output
    assert (out / "export" / "1" / "saved_model.pb").is_file()
    # A small reproduce grid in two shards at once, then the export: every job its own process, its log in logs/.
    logs = sorted(path.name for path in (out / "logs").glob("*.log"))
    assert len(logs) == 10 + 1 and {"segment-1of2.log", "train-patch_f1_test_cnn.log", "export.log"} <= set(logs)
    assert "shard 1/2 [6/6] done" in result.output and "shard 2/2 [4/4] done" in result.output
    assert "ensemble_patched: mean learner weights" in result.output
    assert "predict --model on" in result.output and '"lung_fraction"' in result.output
