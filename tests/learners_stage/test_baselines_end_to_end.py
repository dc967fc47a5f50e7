"""The baselines (issue 29) run through the same commands as every learner, with nothing naming them outside the
registry: train-global, predict-base, evaluate, audit, export and predict --model, on the bundled sample.

Tiny inputs and one epoch (the property is the path, not the score); the served probabilities of each test film
equal the predict-base scores of that film (K = 1 global learner: no random patch positions), so the export
serves the very model `evaluate` and `audit` scored.
"""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tfflannel import CLASS_NAMES
from tfflannel.cli import main

TINY = ["--set", "global_learner.resize=72", "--set", "global_learner.crop_size=64", "--set",
        "global_learner.precise_bn_batches=0", "--set", "audit.bootstrap_resamples=20", "--set", "audit.gradcam=false"]


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["covidnet_cxr", "efficientnet_b4"])
def test_a_baseline_trains_is_scored_audited_and_served_through_the_common_commands(backbone, tmp_path,
                                                                                   sample_workdir, sample_cls_dir):
    runner, run = CliRunner(), tmp_path / f"global_{backbone}"

    def invoke(*args):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, (args[0], result.output)
        return result

    invoke("train-global", "--backbone", backbone, "--fold", 1, "--data", sample_workdir, "--out", run,
           "--epochs", 1, "--batch-size", 8, *TINY)
    invoke("predict-base", "--run", run, *TINY)
    invoke("evaluate", "--runs", run, "--out", tmp_path / "report")
    with open(tmp_path / "report" / "metrics.csv") as handle:
        macro = [r for r in csv.DictReader(handle) if r["class"] == "macro"]
    assert [r["run"] for r in macro] == [f"global:{backbone}"] and macro[0]["ci_low"] != ""
    invoke("audit", "--runs", run, "--data", sample_workdir, "--out", tmp_path / "audit", *TINY)
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert [(a["run"], a["mode"]) for a in audit["learners"]] == [(f"global:{backbone}", "global")]
    assert set(audit["learners"][0]["conditions"]) == {"normal", "lungs_only", "lungs_removed"}
    invoke("export", "--runs", run, "--out", tmp_path / "export", *TINY)

    with open(run / "predictions" / "test.csv") as handle:
        scored = {r["image_id"]: [float(r[f"prob_{c}"]) for c in CLASS_NAMES] for r in csv.DictReader(handle)}
    with open(sample_workdir / "manifest.csv") as handle:
        paths = {r["image_id"]: r["path"] for r in csv.DictReader(handle) if r["image_id"] in scored}
    films = sorted(paths)[:3]
    served = json.loads(invoke("predict", *[paths[f] for f in films], "--model",
                               tmp_path / "export").stdout)
    for film, answer in zip(films, served, strict=True):
        np.testing.assert_allclose([answer["probabilities"][c] for c in CLASS_NAMES], scored[film], atol=1e-5)
