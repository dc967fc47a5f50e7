"""export + predict: the SavedModel reproduces the in-memory pipeline, TF Serving's layout and request body."""

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import yaml
from click.testing import CliRunner

from tfflannel.cli import main
from tfflannel.data.io import read_image
from tfflannel.export.saved_model import build_pipeline, equalize_gamma_tf
from tfflannel.models.classifier import build_classifier
from tfflannel.models.ensemble import build_ensemble
from tfflannel.segmentation.inference import load_segmenter
from tfflannel.segmentation.preprocess import equalize_gamma


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, sample_workdir):
    """Two untrained base learners (a patched and a global one) and a GENet over them."""
    import keras

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("tiny-runs")
    runs = []
    for kind, backbone in (("patch", "mobilenet_v2"), ("global", "mobilenet_v2")):
        run = root / f"{kind}_{backbone}"
        run.mkdir()
        build_classifier(backbone, 64).save(run / "model.keras")
        info = {"kind": kind, "backbone": backbone, "fold": 1, "workdir": str(sample_workdir), "input_size": 64}
        if kind == "global":
            info["resize"] = 80
        (run / "run.yaml").write_text(yaml.safe_dump(info))
        runs.append(run)
    ensemble = root / "ensemble"
    ensemble.mkdir()
    build_ensemble("genet", 2, 4).save(ensemble / "model.keras")
    (ensemble / "run.yaml").write_text(yaml.safe_dump({"kind": "ensemble", "fold": 1, "score": "prob",
                                                       "workdir": str(sample_workdir),
                                                       "runs": [str(r.resolve()) for r in runs]}))
    return runs, ensemble


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_runs):
    runs, ensemble = tiny_runs
    out = tmp_path_factory.mktemp("export") / "model"
    result = CliRunner().invoke(main, ["export", "--runs", ",".join(map(str, runs)), "--ensemble", str(ensemble),
                                       "--out", str(out), "--set", "inference.k=6"])
    assert result.exit_code == 0, result.output
    return out


def test_equalize_gamma_in_graph_matches_numpy(sample_cls_dir):
    image = read_image(next((sample_cls_dir / "covid19").glob("*.png")))[0]
    np.testing.assert_allclose(equalize_gamma_tf(tf.constant(image)).numpy(), equalize_gamma(image), atol=1e-3)


def test_export_layout_and_outputs_match_python_pipeline(exported, tiny_runs, sample_cls_dir):
    runs, ensemble = tiny_runs
    assert (exported / "1" / "saved_model.pb").is_file() and (exported / "1" / "variables").is_dir()
    assert json.loads((exported / "1" / "assets.extra" / "class_names.json").read_text())[0] == "covid19"
    loaded = tf.saved_model.load(str(exported / "1"))
    assert set(loaded.signatures) == {"serving_default", "predict_uint8"}
    python_pipeline = build_pipeline(load_segmenter(), runs, ensemble, k=6)
    for path in sorted(sample_cls_dir.glob("*/*.png"))[::13]:
        image = read_image(path)[0][None, ..., None]
        expected = python_pipeline.serve_uint8(tf.constant(image))
        got = loaded.signatures["predict_uint8"](images=tf.constant(image))
        np.testing.assert_allclose(got["probabilities"].numpy(), expected["probabilities"].numpy(), atol=1e-4)
        np.testing.assert_allclose(got["learner_scores"].numpy(), expected["learner_scores"].numpy(), atol=1e-4)
        assert got["label"].numpy()[0].decode() in ("covid19", "viral_pneumonia", "bacterial_pneumonia", "normal")
        assert 0.0 < float(got["lung_fraction"].numpy()[0]) < 1.0
        np.testing.assert_allclose(got["probabilities"].numpy().sum(), 1.0, atol=1e-5)


def test_rest_request_body_round_trip(exported, sample_cls_dir):
    """The body TF Serving's REST API takes: {"instances": [{"b64": ...}]} for the serving_default signature."""
    paths = sorted(sample_cls_dir.glob("normal/*.png"))[:2]
    body = json.dumps({"signature_name": "serving_default",
                       "instances": [{"b64": base64.b64encode(p.read_bytes()).decode()} for p in paths]})
    instances = [base64.b64decode(item["b64"]) for item in json.loads(body)["instances"]]  # what the server does
    loaded = tf.saved_model.load(str(exported / "1"))
    served = loaded.signatures["serving_default"](images=tf.constant(instances))
    direct = [loaded.signatures["predict_uint8"](images=tf.constant(read_image(p)[0][None, ..., None])) for p in paths]
    for index, result in enumerate(direct):
        np.testing.assert_allclose(served["probabilities"].numpy()[index], result["probabilities"].numpy()[0], atol=1e-4)


def test_saved_model_cli_lists_signatures(exported):
    cli = Path(sys.executable).with_name("saved_model_cli")
    if not cli.exists():
        pytest.skip("saved_model_cli is not installed next to this Python")
    result = subprocess.run([str(cli), "show", "--dir", str(exported / "1"), "--all"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("serving_default", "predict_uint8", "probabilities", "lung_fraction", "mask_ok", "learner_scores"):
        assert name in result.stdout


def test_predict_json_csv_dicom_and_failures(exported, tmp_path, sample_cls_dir):
    from tests.data_stage.test_io import _write_dicom

    folder = tmp_path / "films"
    shutil.copytree(sample_cls_dir / "normal", folder)
    image = read_image(next(folder.glob("*.png")))[0]
    _write_dicom(folder / "film.dcm", (image.astype(np.uint16) * 16))
    (folder / "broken.png").write_bytes(b"\x89PNG nothing")
    result = CliRunner().invoke(main, ["predict", str(folder), "--model", str(exported)])
    assert result.exit_code == 1, "a file failed, so the exit code is 1"
    records = json.loads(result.stdout)
    assert len(records) == 11 and any(r["file"].endswith("film.dcm") for r in records)
    for record in records:
        assert set(record) == {"file", "probabilities", "label", "lung_fraction", "mask_ok"}
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-4
    assert "broken.png" in result.stderr and "RESEARCH USE ONLY" in result.stderr
    good = CliRunner().invoke(main, ["predict", str(next(sample_cls_dir.glob("covid19/*.png"))), "--model",
                                     str(exported), "--format", "csv"])
    assert good.exit_code == 0, good.output
    assert good.stdout.startswith("file,prob_covid19")


@pytest.mark.parametrize("kind", ["patch", "global"])
def test_explain_map_shape_lungs_only_and_class_dependent(tiny_runs, sample_cls_dir, tmp_path, kind):
    from tfflannel.explain.gradcam import explain_image, save_explanation

    runs, _ = tiny_runs
    run = runs[0] if kind == "patch" else runs[1]
    image = read_image(next((sample_cls_dir / "covid19").glob("*.png")))[0]
    first = explain_image(image, run, "covid19", k=8)
    second = explain_image(image, run, "normal", k=8)
    assert first["heatmap"].shape == first["image"].shape == first["mask"].shape
    assert np.all(first["heatmap"][first["mask"] == 0] == 0), "zero outside the lungs"
    assert 0.0 <= first["heatmap"].min() and first["heatmap"].max() <= 1.0 + 1e-9
    assert first["heatmap"].max() > 0
    assert not np.allclose(first["heatmap"], second["heatmap"]), "another target class gives another map"
    path = save_explanation(first, tmp_path / "x.png")
    assert path.stat().st_size > 10_000


def test_explain_cli_writes_png(tiny_runs, sample_cls_dir, tmp_path):
    runs, _ = tiny_runs
    image = next((sample_cls_dir / "normal").glob("*.png"))
    result = CliRunner().invoke(main, ["explain", str(image), "--run", str(runs[0]), "--out", str(tmp_path / "e.png"),
                                       "--k", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "e.png").read_bytes()[:4] == b"\x89PNG" and "RESEARCH USE ONLY" in result.output


def test_single_learner_export_and_predict_with_runs_and_explain(tiny_runs, tmp_path, sample_cls_dir):
    runs, _ = tiny_runs
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--runs", str(runs[0]), "--out", str(tmp_path / "single"),
                                  "--version", "3", "--set", "inference.k=4"])
    assert result.exit_code == 0, result.output
    loaded = tf.saved_model.load(str(tmp_path / "single" / "3"))
    image = read_image(next((sample_cls_dir / "viral_pneumonia").glob("*.png")))[0][None, ..., None]
    out = loaded.signatures["predict_uint8"](images=tf.constant(image))
    assert out["learner_scores"].shape == (1, 1, 4)
    np.testing.assert_allclose(out["probabilities"].numpy(), out["learner_scores"].numpy()[:, 0], atol=1e-6)
    again = runner.invoke(main, ["export", "--runs", str(runs[0]), "--out", str(tmp_path / "single"), "--version", "3"])
    assert again.exit_code == 2 and "exists" in again.output
    film = next((sample_cls_dir / "normal").glob("*.png"))
    result = runner.invoke(main, ["predict", str(film), "--runs", str(runs[0]), "--explain", str(tmp_path / "cams"),
                                  "--set", "inference.k=4"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["file"] == str(film)
    assert len(list((tmp_path / "cams").glob("*.png"))) == 1
