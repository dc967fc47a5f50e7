"""export + predict: the SavedModel serves what segment + predict-base + the ensemble computed; TF Serving's layout."""

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

from tfflannel import CLASS_NAMES
from tfflannel.cli import main
from tfflannel.config import load_config
from tfflannel.data.io import read_image
from tfflannel.data.manifest import load_manifest
from tfflannel.evaluation.report import _load_run
from tfflannel.models.classifier import build_classifier
from tfflannel.segmentation.inference import load_segmenter
from tfflannel.segmentation.view_records import read_cache_records
from tfflannel.serving.builder import build_pipeline
from tfflannel.utils import read_csv

K = 6
# A sharpening temperature recorded in place of the fitted one (see `tiny_runs`): the served probabilities then
# differ between films by far more than the parity tolerance (1e-5), so a pipeline that mixed films up would fail.
SHARPENING_T = 0.2


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, sample_workdir):
    """Two untrained base learners (a patched and a global one) with predict-base outputs, and a GENet over them."""
    import keras

    from tfflannel.ensemble.train import train_ensemble
    from tfflannel.learners.infer import predict_base

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("tiny-runs")
    runs = []
    # test_cnn: the tiny registered backbone (export and serving treat every backbone alike); untrained, its
    # random max-pooled features already make the scores vary between films.
    for kind, backbone in (("patch", "test_cnn"), ("global", "test_cnn")):
        run = root / f"{kind}_{backbone}"
        run.mkdir()
        build_classifier(backbone, 64).save(run / "model.keras")
        info = {"kind": kind, "backbone": backbone, "fold": 1, "workdir": str(sample_workdir), "input_size": 64}
        if kind == "global":
            info["resize"] = 80
        (run / "run.yaml").write_text(yaml.safe_dump(info))
        predict_base(run, sample_workdir, k=K, images_per_batch=4, seed=0, progress=False)
        runs.append(run)
    config = load_config(None, ["ensemble.epochs=5", "ensemble.learning_rate=0.05"])
    train_ensemble(config, runs, root / "ensemble", fold=1, progress=False)
    # These untrained learners' fitted temperature flattens the ensemble's probabilities to almost uniform; a
    # sharpening T recorded in its place keeps the served probabilities varied, so the parity checks could fail.
    record = json.loads((root / "ensemble" / "calibration.json").read_text())
    assert record["method"] == "temperature" and record["temperature"] > 0
    (root / "ensemble" / "calibration.json").write_text(json.dumps({**record, "temperature": SHARPENING_T}))
    return runs, root / "ensemble"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_runs):
    runs, ensemble = tiny_runs
    out = tmp_path_factory.mktemp("export") / "model"
    result = CliRunner().invoke(main, ["export", "--runs", ",".join(map(str, runs)), "--ensemble", str(ensemble),
                                       "--out", str(out)])           # K and seed: the ensemble's, not the config's 100
    assert result.exit_code == 0, result.output
    assert f"K {K} and patch seed 0 taken from {ensemble}" in result.stderr, result.output
    return out


def test_export_serves_what_segment_predict_base_and_the_ensemble_computed(exported, tiny_runs, sample_workdir):
    """For the fold's test films: the SavedModel's probabilities are what `evaluate` scores: the ensemble's
    predictions/test.csv with the run's temperature applied (one implementation, `evaluation.report._load_run`)."""
    runs, ensemble = tiny_runs
    loaded = tf.saved_model.load(str(exported / "1"))
    evaluated = _load_run(ensemble, "test")
    assert evaluated["temperature"].fitted and evaluated["temperature"].temperature == SHARPENING_T
    assert f"Ensemble temperature: {evaluated['temperature'].temperature}" in \
        (exported / "1" / "assets.extra" / "README.txt").read_text()
    expected = {image_id: {f"prob_{c}": p for c, p in zip(CLASS_NAMES, probs, strict=True)}
                for image_id, probs in zip(evaluated["ids"], evaluated["probabilities"], strict=True)}
    learner_rows = [{row["image_id"]: row for row in read_csv(run / "predictions" / "test.csv")} for run in runs]
    cache = {r["image_id"]: r for r in read_cache_records(sample_workdir / "cache")}
    rows = [r for r in load_manifest(sample_workdir) if r["split"] == "test"]
    assert len(rows) == len(expected) >= 4
    spread = np.std([[float(expected[r["image_id"]][f"prob_{c}"]) for c in CLASS_NAMES] for r in rows], axis=0)
    assert spread.max() > 1e-3, f"the ensemble's probabilities vary between films (std {spread.max():.2g})"
    for row in rows:
        film = read_image(row["path"])[0][None, ..., None]
        got = loaded.signatures["predict_uint8"](images=tf.constant(film))
        np.testing.assert_allclose(got["probabilities"].numpy()[0],
                                   [float(expected[row["image_id"]][f"prob_{c}"]) for c in CLASS_NAMES], atol=1e-5)
        for index, learner in enumerate(learner_rows):      # each learner's scores equal predict-base's
            np.testing.assert_allclose(got["learner_scores"].numpy()[0, index],
                                       [float(learner[row["image_id"]][f"prob_{c}"]) for c in CLASS_NAMES], atol=1e-5)
        expected_fraction = cache[row["image_id"]]["lung_fraction"]
        assert float(got["lung_fraction"].numpy()[0]) == pytest.approx(expected_fraction, abs=1e-7)
        assert bool(got["mask_ok"].numpy()[0]) == bool(cache[row["image_id"]]["mask_ok"])
        for name in ("mask_confidence", "flip_disagreement"):       # segment's numbers, served
            assert float(got[name].numpy()[0]) == pytest.approx(cache[row["image_id"]][name], abs=1e-6)


def test_export_masks_and_views_are_the_cache_records(tiny_runs, sample_workdir):
    """The pipeline the export saves builds, per film, exactly the cached masked view and mask (IoU 1)."""
    runs, ensemble = tiny_runs
    pipeline = build_pipeline(load_segmenter(), runs, ensemble, k=K)
    views = tf.function(lambda images: pipeline.views_and_quality(lambda i: images[i, ..., 0], tf.shape(images)[0]),
                        input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8)])
    rows = {r["image_id"]: r for r in load_manifest(sample_workdir)}
    records = read_cache_records(sample_workdir / "cache")
    for record in records[::5]:
        film = read_image(rows[record["image_id"]]["path"])[0]
        images, masks, fraction, ok, confidence, disagreement = views(tf.constant(film[None, ..., None]))
        np.testing.assert_array_equal(masks.numpy()[0], record["mask"])
        np.testing.assert_array_equal(images.numpy()[0], record["image"])
        assert float(confidence.numpy()[0]) == pytest.approx(record["mask_confidence"], abs=1e-6)
        assert float(disagreement.numpy()[0]) == pytest.approx(record["flip_disagreement"], abs=1e-6)


@pytest.mark.slow
def test_export_layout_and_outputs_match_python_pipeline(exported, tiny_runs, sample_cls_dir):
    runs, ensemble = tiny_runs
    assert (exported / "1" / "saved_model.pb").is_file() and (exported / "1" / "variables").is_dir()
    assert json.loads((exported / "1" / "assets.extra" / "class_names.json").read_text())[0] == "covid19"
    loaded = tf.saved_model.load(str(exported / "1"))
    assert set(loaded.signatures) == {"serving_default", "predict_uint8"}
    python_pipeline = build_pipeline(load_segmenter(), runs, ensemble, k=K)
    for path in sorted(sample_cls_dir.glob("*/*.png"))[::13]:
        image = read_image(path)[0][None, ..., None]
        expected = python_pipeline.serve_uint8(tf.constant(image))
        got = loaded.signatures["predict_uint8"](images=tf.constant(image))
        np.testing.assert_allclose(got["probabilities"].numpy(), expected["probabilities"].numpy(), atol=1e-6)
        np.testing.assert_allclose(got["learner_scores"].numpy(), expected["learner_scores"].numpy(), atol=1e-6)
        assert got["label"].numpy()[0].decode() in ("covid19", "viral_pneumonia", "bacterial_pneumonia", "normal")
        assert 0.0 < float(got["lung_fraction"].numpy()[0]) < 1.0
        np.testing.assert_allclose(got["probabilities"].numpy().sum(), 1.0, atol=1e-5)


@pytest.mark.slow
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
        np.testing.assert_allclose(served["probabilities"].numpy()[index], result["probabilities"].numpy()[0],
                                   atol=1e-5)


@pytest.mark.slow
def test_predict_runs_equals_predict_model_and_k_comes_from_the_config(exported, tiny_runs, sample_cls_dir):
    runs, ensemble = tiny_runs
    films = [str(p) for p in sorted(sample_cls_dir.glob("*/*.png"))[::11]]
    runner = CliRunner()
    served = runner.invoke(main, ["predict", *films, "--model", str(exported)])
    direct = runner.invoke(main, ["predict", *films, "--runs", ",".join(map(str, runs)), "--ensemble", str(ensemble),
                                  "--set", f"inference.k={K}"])
    assert served.exit_code == 0 and direct.exit_code == 0, served.output + direct.output
    for a, b in zip(json.loads(served.stdout), json.loads(direct.stdout), strict=True):
        assert a["file"] == b["file"] and a["mask_ok"] == b["mask_ok"] and a["lung_fraction"] == b["lung_fraction"]
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-5)
    assert f"K={K} patches" in (exported / "1" / "assets.extra" / "README.txt").read_text()
    other = runner.invoke(main, ["predict", films[0], "--runs", ",".join(map(str, runs)), "--ensemble", str(ensemble),
                                 "--set", "inference.k=1"])
    assert other.exit_code == 2, "inference.k reaches predict --runs, and K=1 is not what the ensemble was fit on"
    assert f"K={K}" in other.output and "K=1" in other.output and f"--set inference.k={K}" in other.output


def test_served_k_and_seed_come_from_the_runs_unless_the_user_sets_them(exported, tiny_runs, sample_cls_dir,
                                                                         tmp_path):
    """predict --runs and explain take K and the seed the runs were evaluated with (one line says so); a value
    set with --set, --k or a given --config is the user's, and predict refuses it where it differs."""
    runs, ensemble = tiny_runs
    film = str(next((sample_cls_dir / "covid19").glob("*.png")))
    runner = CliRunner()
    served = runner.invoke(main, ["predict", film, "--model", str(exported)])
    direct = runner.invoke(main, ["predict", film, "--runs", ",".join(map(str, runs)), "--ensemble", str(ensemble)])
    assert direct.exit_code == 0, direct.output
    assert [line for line in direct.stderr.splitlines() if "taken from" in line] == \
        [f"K {K} and patch seed 0 taken from {ensemble} (the member predictions it was fit on)"]
    np.testing.assert_allclose(list(json.loads(direct.stdout)[0]["probabilities"].values()),
                               list(json.loads(served.stdout)[0]["probabilities"].values()), atol=1e-5)
    config = tmp_path / "k1.yaml"
    config.write_text("inference:\n  k: 1\n")
    given = runner.invoke(main, ["predict", film, "--runs", ",".join(map(str, runs)), "--ensemble", str(ensemble),
                                 "--config", str(config)])
    assert given.exit_code == 2 and f"--set inference.k={K}" in given.output, "a given config's K is refused"
    assert f"patch seed 0 taken from {ensemble}" in given.stderr and f"K {K} and" not in given.stderr
    single = runner.invoke(main, ["predict", film, "--runs", str(runs[0])])
    assert single.exit_code == 0, single.output
    assert f"K {K} and patch seed 0 taken from {runs[0]} (predictions/provenance.json" in single.stderr
    maps = {}
    for name, extra in (("runs", []), ("explicit", ["--k", str(K), "--set", "inference.seed=0"]),
                        ("other", ["--k", "4"])):
        result = runner.invoke(main, ["explain", film, "--run", str(runs[0]), "--out", str(tmp_path / f"{name}.png"),
                                      *extra])
        assert result.exit_code == 0, result.output
        maps[name] = (tmp_path / f"{name}.png").read_bytes()
        taken = [line for line in result.stderr.splitlines() if "taken from" in line]
        assert taken == {"runs": [f"K {K} and patch seed 0 taken from {runs[0]} (predictions/provenance.json of "
                                  f"predict-base)"],
                         "explicit": [], "other": [f"patch seed 0 taken from {runs[0]} (predictions/provenance.json "
                                                   f"of predict-base)"]}[name], result.stderr
    assert maps["runs"] == maps["explicit"] != maps["other"], "explain drew the run's K patches, --k 4 others"


def test_explain_patches_are_predict_base_patches(tiny_runs, sample_workdir):
    """Same K and seed: explain cuts the very patches predict-base's evaluation pipeline classifies."""
    from tfflannel.explain.gradcam import explain_with_run
    from tfflannel.film_pipeline import crop_patches
    from tfflannel.learners.infer import read_run
    from tfflannel.patches.pipeline import evaluation_dataset

    runs, _ = tiny_runs
    model, info = read_run(runs[0])
    rows = {r["image_id"]: r for r in load_manifest(sample_workdir)}
    batches = list(evaluation_dataset(sample_workdir, "test", 1, K, 64, seed=3, images_per_batch=1))
    for patches, _, ids in batches[:2]:
        film = read_image(rows[ids.numpy()[0].decode()]["path"])[0]
        result = explain_with_run(film, model, info, None, K, 3, load_segmenter())
        again = crop_patches(tf.constant(result["image"][None, ..., None]), tf.constant(result["centres"][None]), 64)
        np.testing.assert_array_equal(again.numpy(), patches.numpy())


@pytest.mark.slow
def test_saved_model_cli_lists_signatures(exported):
    cli = Path(sys.executable).with_name("saved_model_cli")
    if not cli.exists():
        pytest.skip("saved_model_cli is not installed next to this Python")
    result = subprocess.run([str(cli), "show", "--dir", str(exported / "1"), "--all"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("serving_default", "predict_uint8", "probabilities", "lung_fraction", "mask_ok", "learner_scores",
                 "mask_confidence", "flip_disagreement"):
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
        assert set(record) == {"file", "probabilities", "label", "lung_fraction", "mask_ok", "mask_confidence",
                               "flip_disagreement"}
        assert 0 <= record["mask_confidence"] <= 1 and 0 <= record["flip_disagreement"] <= 1
        assert abs(sum(record["probabilities"].values()) - 1) < 1e-4
    assert "broken.png" in result.stderr and "RESEARCH USE ONLY" in result.stderr
    good = CliRunner().invoke(main, ["predict", str(next(sample_cls_dir.glob("covid19/*.png"))), "--model",
                                     str(exported), "--format", "csv"])
    assert good.exit_code == 0, good.output
    assert good.stdout.startswith("file,prob_covid19")
    assert good.stdout.splitlines()[0].endswith(",lung_fraction,mask_ok,mask_confidence,flip_disagreement")


@pytest.mark.parametrize("kind", ["patch", "global"])
def test_explain_map_shape_lungs_only_and_class_dependent(tiny_runs, sample_cls_dir, tmp_path, kind):
    from tfflannel.explain.gradcam import explain_image, save_explanation

    runs, _ = tiny_runs
    run = runs[0] if kind == "patch" else runs[1]
    image = read_image(next((sample_cls_dir / "covid19").glob("*.png")))[0]
    first = explain_image(image, run, None, k=8)          # the predicted class
    least = min(first["probabilities"], key=first["probabilities"].get)
    second = explain_image(image, run, least, k=8)
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
    for setting, named in ((f"inference.k={K - 2}", f"K {K}, served with K {K - 2}; fix: --set inference.k={K}"),
                           ("inference.seed=3", "patch seed 0, served with patch seed 3; fix: --set inference.seed=0")):
        refused = runner.invoke(main, ["export", "--runs", str(runs[0]), "--out", str(tmp_path / "single"),
                                       "--set", f"inference.k={K}", "--set", setting])
        assert refused.exit_code == 2 and named in refused.output and str(runs[0]) in refused.output, refused.output
    assert not (tmp_path / "single").exists(), "a single learner is served with the K and seed of its scores"
    result = runner.invoke(main, ["export", "--runs", str(runs[0]), "--out", str(tmp_path / "single"),
                                  "--version", "3", "--set", f"inference.k={K}"])
    assert result.exit_code == 0, result.output
    loaded = tf.saved_model.load(str(tmp_path / "single" / "3"))
    image = read_image(next((sample_cls_dir / "viral_pneumonia").glob("*.png")))[0][None, ..., None]
    out = loaded.signatures["predict_uint8"](images=tf.constant(image))
    assert out["learner_scores"].shape == (1, 1, 4)
    np.testing.assert_allclose(out["probabilities"].numpy(), out["learner_scores"].numpy()[:, 0], atol=1e-6)
    again = runner.invoke(main, ["export", "--runs", str(runs[0]), "--out", str(tmp_path / "single"), "--version", "3",
                                 "--set", f"inference.k={K}"])
    assert again.exit_code == 2 and "exists" in again.output
    film = next((sample_cls_dir / "normal").glob("*.png"))
    result = runner.invoke(main, ["predict", str(film), "--runs", str(runs[0]), "--explain", str(tmp_path / "cams"),
                                  "--set", f"inference.k={K}"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["file"] == str(film)
    assert len(list((tmp_path / "cams").glob("*.png"))) == 1


def test_only_finished_scores_of_the_present_model_set_the_k_to_serve(tiny_runs, tmp_path):
    """A killed predict-base (nothing done), scores of a model trained since, or an unreadable provenance: no check."""
    from tfflannel.serving.checks import scored_with

    runs, _ = tiny_runs
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    shutil.copy(runs[0] / "model.keras", run / "model.keras")
    recorded = json.loads((runs[0] / "predictions" / "provenance.json").read_text())
    provenance = run / "predictions" / "provenance.json"
    provenance.write_text(json.dumps(recorded))
    assert scored_with(run)["k"] == K and recorded["done"]
    provenance.write_text(json.dumps({**recorded, "identity": {**recorded["identity"], "k": 99}, "done": []}))
    assert scored_with(run) == {}, "a predict-base killed before its first partition describes no scores"
    provenance.write_text(json.dumps({**recorded, "identity": {**recorded["identity"], "model_sha256": "0" * 64}}))
    assert scored_with(run) == {}, "scores of another model"
    provenance.write_text("{half")
    with pytest.warns(UserWarning, match="unreadable"):
        assert scored_with(run) == {}


def test_serving_refuses_a_view_segmenter_k_or_seed_other_than_evaluated(tiny_runs, sample_cls_dir, tmp_path):
    """predict / explain / export check the runs' cache key and the ensemble's K and seed before serving."""
    runs, ensemble = tiny_runs
    film = str(next((sample_cls_dir / "normal").glob("*.png")))
    runner = CliRunner()
    both = ["--runs", ",".join(map(str, runs)), "--ensemble", str(ensemble), "--set", f"inference.k={K}"]
    for setting, named, fix in (("patches.input=raw", "input was 'equalized'", "--set patches.input=equalized"),
                                ("segmentation.cache_size=512", "size was 1024", "segmentation.cache_size=1024"),
                                ("segmentation.max_lung_fraction=0.9", "max_lung_fraction was 0.65", "=0.65"),
                                ("segmentation.min_mask_confidence=0.9", "min_mask_confidence was None",
                                 "--set segmentation.min_mask_confidence=0.0"),
                                ("inference.seed=5", "patch seed 0", "--set inference.seed=0")):
        result = runner.invoke(main, ["predict", film, *both, "--set", setting])
        assert result.exit_code == 2, (setting, result.output)
        assert str(runs[0] if "seed" not in setting else ensemble) in result.output
        assert named in result.output and fix in result.output, result.output
    shipped = load_segmenter()
    other_seg = tmp_path / "other_seg.keras"
    shipped.model.save(other_seg)                                  # same weights, another file: another fingerprint
    for command in (["explain", film, "--run", str(runs[0]), "--k", "4"],
                    ["export", *both, "--out", str(tmp_path / "x")]):
        result = runner.invoke(main, [*command, "--seg", str(other_seg)])
        assert result.exit_code == 2, result.output
        assert "segmenter was" in result.output and shipped.fingerprint in result.output and "--seg" in result.output
    assert not (tmp_path / "x").exists()


def test_predict_several_runs_without_ensemble_and_predict_base_on_an_ensemble_exit_2(tiny_runs, sample_cls_dir):
    runs, ensemble = tiny_runs
    film = str(next((sample_cls_dir / "normal").glob("*.png")))
    result = CliRunner().invoke(main, ["predict", film, "--runs", ",".join(map(str, runs))])
    assert result.exit_code == 2 and "--ensemble" in result.output, result.output
    result = CliRunner().invoke(main, ["predict-base", "--run", str(ensemble)])
    assert result.exit_code == 2 and "train-ensemble run" in result.output, result.output


def test_training_records_the_cache_key_and_a_copied_run_is_checked_against_it(sample_workdir, tmp_path):
    """Starting a patch learner's run refuses a cache of other view settings and writes cache.json's key into
    run.yaml; a run folder copied without its work directory is checked against that record."""
    from tfflannel.errors import InputError
    from tfflannel.film_pipeline import ViewSettings
    from tfflannel.learners.train import LearnerTask, _run_info
    from tfflannel.run_info import load_run_info, save_run_info
    from tfflannel.serving.checks import check_runs_match
    from tfflannel.training import start_run

    run = tmp_path / "work" / "run"
    shutil.copytree(sample_workdir, tmp_path / "work", ignore=shutil.ignore_patterns("*.tfrecord"))

    def task():
        info = _run_info("patch", "mobilenet_v2", 1, tmp_path / "work", run, 64, 4, 0)
        return LearnerTask("patched", info, tmp_path / "work", "mobilenet_v2")

    raw = load_config(None, ["patched.epochs=1", "patches.input=raw"])
    with pytest.raises(InputError, match=r"input: cache 'equalized', config 'raw'.*rerun `segment`"):
        start_run(raw, task(), run)
    strict = load_config(None, ["patched.epochs=1", "segmentation.min_mask_confidence=0.9"])
    with pytest.raises(InputError, match=r"min_mask_confidence: cache 0.0, config 0.9"):
        start_run(strict, task(), run)
    assert not (run / "run.yaml").exists(), "a training on a cache of other view settings is refused"
    config = load_config(None, ["patched.epochs=1"])
    start_run(config, task(), run)
    info = load_run_info(run)
    key = json.loads((sample_workdir / "cache" / "cache.json").read_text())["key"]
    assert info.cache_key == key
    shutil.rmtree(tmp_path / "work" / "cache")                     # a run folder copied without its work directory
    segmenter = load_segmenter()
    check_runs_match(segmenter, [run], [info], k=4, seed=0, view=ViewSettings())
    info.cache_key = {**key, "input": "raw"}
    save_run_info(run, info)
    with pytest.raises(InputError, match=r"input was 'raw' \(per .*run.yaml\).*--set patches.input=raw"):
        check_runs_match(segmenter, [run], [load_run_info(run)], k=4, seed=0, view=ViewSettings())
