"""segment: the masked-view cache on real sample images; keyed to its inputs, resumable, no stale records."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from tests import oracles
from tests.oracles import clean_lung_mask, letterbox_geometry
from tfflannel.cli import main
from tfflannel.data.io import read_image
from tfflannel.data.manifest import load_manifest, prepare_manifest
from tfflannel.film_pipeline import ViewSettings, equalize_gamma_tf, letterbox, to_uint8
from tfflannel.segmentation.cache import CacheSettings, build_cache
from tfflannel.segmentation.inference import load_segmenter
from tfflannel.segmentation.qc_grid import qc_order, qc_tile
from tfflannel.segmentation.view_records import read_cache_records
from tfflannel.utils import read_csv, write_csv_atomic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _small_workdir(tmp_path, sample_cls_dir, per_class=3, seed=0):
    data = tmp_path / "data"
    if not data.exists():
        for label_dir in sorted(p for p in sample_cls_dir.iterdir() if p.is_dir()):
            (data / label_dir.name).mkdir(parents=True)
            for path in sorted(label_dir.glob("*.png"))[:per_class]:
                shutil.copy(path, data / label_dir.name / path.name)
    work = tmp_path / "work"
    prepare_manifest(work, folders=[data], folds=2, test_size=0.5, seed=seed, progress=False)
    return work, data


def _records(work):
    return {r["image_id"]: r for r in read_cache_records(work / "cache")}


def test_cache_records_are_the_equalised_film_times_the_cleaned_mask(sample_workdir):
    records = _records(sample_workdir)
    rows = load_manifest(sample_workdir)
    assert set(records) == {r["image_id"] for r in rows}
    segmenter = load_segmenter()
    for row in rows[:4]:
        record = records[row["image_id"]]
        film = read_image(row["path"])[0]
        view = to_uint8(letterbox(equalize_gamma_tf(tf.constant(film))[..., None], 1024)[..., 0]).numpy()
        assert record["image"].shape == (1024, 1024) and record["image"].dtype == np.uint8
        np.testing.assert_array_equal(record["image"], view * record["mask"])
        # The mask is the segmenter's argmax cleaned as SciPy would (oracle), upsampled by nearest neighbour.
        probabilities = segmenter.probabilities(segmenter.prepare(tf.constant(film))[0][None]).numpy()[0]
        raw = np.isin(probabilities.argmax(-1), segmenter.lung_classes)
        content = np.zeros_like(raw)
        content_h, content_w = letterbox_geometry(*film.shape, raw.shape[0])
        content[:content_h, :content_w] = True
        expected = clean_lung_mask(raw).astype(bool) & content
        if record["mask_ok"]:
            factor = 1024 // raw.shape[0]
            np.testing.assert_array_equal(record["mask"], np.kron(expected, np.ones((factor, factor))).astype(np.uint8))
            assert record["lung_fraction"] == pytest.approx(expected.sum() / (content_h * content_w), abs=1e-6)
        y0, x0, y1, x1 = record["lung_bbox"]
        assert record["mask"][y0:y1, x0:x1].sum() == record["mask"].sum()
        # Mask confidence and flip disagreement: the NumPy oracle on the segmenter's two passes.
        outputs, mirrored = (x.numpy() for x in segmenter.outputs(segmenter.prepare(tf.constant(film))[0][None]))
        _, confidence, disagreement = oracles.segment_quality(outputs, mirrored, segmenter.lung_classes,
                                                              segmenter.flip_tta)
        assert record["mask_confidence"] == pytest.approx(confidence[0], abs=1e-5)
        assert record["flip_disagreement"] == pytest.approx(disagreement[0], abs=1e-5)
    index = read_csv(sample_workdir / "cache" / "index.csv")
    assert len(index) == len(rows) and set(index[0]) == {"image_id", "sha256", "shard", "mask_ok", "lung_fraction",
                                                         "mask_confidence", "flip_disagreement"}
    for row in index:
        assert float(row["mask_confidence"]) == pytest.approx(records[row["image_id"]]["mask_confidence"], abs=5e-5)
        assert float(row["flip_disagreement"]) == pytest.approx(records[row["image_id"]]["flip_disagreement"],
                                                                abs=5e-5)
    ok = [r for r in index if r["mask_ok"] == "1"]
    assert len(ok) >= 0.8 * len(index), "the shipped segmenter should pass QC on most sample films"
    assert (sample_workdir / "cache" / "qc.png").stat().st_size > 10_000
    key = json.loads((sample_workdir / "cache" / "cache.json").read_text())["key"]
    assert key["segmenter"] == load_segmenter().fingerprint and key["input"] == "equalized"


def test_qc_grid_shows_the_least_confident_masks_first_with_their_numbers(sample_workdir):
    import cv2

    cache = sample_workdir / "cache"
    index = read_csv(cache / "index.csv")
    records = _records(sample_workdir)
    confidences = [float(r["mask_confidence"]) for r in index]
    assert len(set(confidences)) > len(index) // 2, "confidences vary between films (a test that could fail)"
    order = qc_order(index)
    failed = [r for r in order if r["mask_ok"] == "0"]
    assert order[:len(failed)] == failed, "films that failed QC come first"
    passed = order[len(failed):]
    assert [float(r["mask_confidence"]) for r in passed] == sorted(float(r["mask_confidence"]) for r in passed)
    grid = cv2.imread(str(cache / "qc.png"))
    thumb = 192
    assert grid.shape[1] == 6 * thumb
    for position in (0, 1, 7, min(23, len(index) - 1)):
        row, column = divmod(position, 6)
        tile = grid[row * thumb:(row + 1) * thumb, column * thumb:(column + 1) * thumb]
        np.testing.assert_array_equal(tile, qc_tile(records[order[position]["image_id"]], thumb))
    assert (tile[:14] == (0, 255, 255)).all(axis=-1).any(), "the numbers are printed in yellow on the tile"


def test_min_mask_confidence_fails_doubtful_masks_changes_the_key_and_export_agrees(tmp_path, sample_cls_dir):
    from tfflannel.serving.pipeline import InferencePipeline

    work, _ = _small_workdir(tmp_path, sample_cls_dir)
    segmenter = load_segmenter()
    build_cache(work, segmenter, CacheSettings(shard_size=12), progress=False)
    before = _records(work)
    # A cache written before the numbers were recorded: its shard is rewritten (same name and views), not reused.
    (part,) = (work / "cache" / "parts").glob("shard-*[0-9a-f].csv")
    old_columns = ("image_id", "sha256", "shard", "mask_ok", "lung_fraction")
    write_csv_atomic(part, read_csv(part), old_columns)
    assert build_cache(work, segmenter, CacheSettings(shard_size=12), progress=False)["written"] == 1
    assert list(read_csv(work / "cache" / "index.csv")[0])[-2:] == ["mask_confidence", "flip_disagreement"]
    for image_id, record in _records(work).items():
        for name in ("image", "mask", "mask_confidence", "flip_disagreement", "raw"):
            np.testing.assert_array_equal(record[name], before[image_id][name])
    key_before = json.loads((work / "cache" / "cache.json").read_text())["key"]
    shards_before = {r["shard"] for r in read_csv(work / "cache" / "index.csv")}
    confidences = sorted(r["mask_confidence"] for r in before.values())
    threshold = (confidences[2] + confidences[3]) / 2                   # between the 3rd and 4th lowest of 12
    settings = CacheSettings(ViewSettings(min_mask_confidence=threshold), shard_size=12)
    build_cache(work, segmenter, settings, progress=False)
    after = _records(work)
    key = json.loads((work / "cache" / "cache.json").read_text())["key"]
    assert key["min_mask_confidence"] == threshold and "min_mask_confidence" not in key_before
    assert "max_flip_disagreement" not in key, "a bound that is off stays out of the key"
    index = read_csv(work / "cache" / "index.csv")
    assert {p.name for p in (work / "cache").glob("*.tfrecord")} == {r["shard"] for r in index}
    assert not {r["shard"] for r in index} & set(shards_before), "a new key: new shards, the old ones removed"
    flipped = 0
    for image_id, record in after.items():
        expected_ok = before[image_id]["mask_ok"] and record["mask_confidence"] >= threshold
        assert record["mask_ok"] == int(expected_ok)
        flipped += before[image_id]["mask_ok"] != record["mask_ok"]
        if not expected_ok:
            assert record["mask"].sum() > before[image_id]["mask"].sum(), "the QC fallback keeps the whole film"
    assert flipped >= 1, "the threshold fails at least one film that passed (a test that could fail)"
    # The export's pipeline with the same view settings: the same masks, QC and numbers.
    pipeline = InferencePipeline(segmenter, [], view=settings.view)
    views = tf.function(lambda images: pipeline.views_and_quality(lambda i: images[i, ..., 0], tf.shape(images)[0]),
                        input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8)])
    paths = {r["image_id"]: r["path"] for r in load_manifest(work)}
    ranked = sorted(after, key=lambda i: after[i]["mask_confidence"])
    for image_id in (ranked[2], ranked[3]):             # both sides of the threshold
        record = after[image_id]
        film = read_image(paths[image_id])[0]
        _, mask, fraction, ok, confidence, disagreement = views(tf.constant(film[None, ..., None]))
        np.testing.assert_array_equal(mask.numpy()[0], record["mask"])
        assert int(ok.numpy()[0]) == record["mask_ok"]
        assert float(confidence.numpy()[0]) == pytest.approx(record["mask_confidence"], abs=1e-6)
        assert float(disagreement.numpy()[0]) == pytest.approx(record["flip_disagreement"], abs=1e-6)


def test_resume_sharding_and_nothing_changed_does_nothing(tmp_path, sample_cls_dir):
    work, _ = _small_workdir(tmp_path, sample_cls_dir)
    segmenter = load_segmenter()
    settings = CacheSettings(shard_size=3)
    first = build_cache(work, segmenter, settings, shard=(1, 2), progress=False)
    assert not first["complete"] and first["written"] == 2
    assert not (work / "cache" / "index.csv").exists()
    second = build_cache(work, segmenter, settings, shard=(2, 2), progress=False)
    assert second["complete"] and second["written"] == 2
    stamps = {p.name: p.stat().st_mtime_ns for p in (work / "cache").rglob("*") if p.is_file()}
    again = build_cache(work, segmenter, settings, progress=False)
    assert again["written"] == 0 and again["skipped"] == 4 and again["removed"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (work / "cache").rglob("*") if p.is_file()} == stamps, \
        "nothing changed: no file is rewritten"
    assert len(read_csv(work / "cache" / "index.csv")) == 12


def test_changed_file_or_setting_rebuilds_only_what_is_stale(tmp_path, sample_cls_dir):
    work, data = _small_workdir(tmp_path, sample_cls_dir)
    segmenter = load_segmenter()
    build_cache(work, segmenter, CacheSettings(shard_size=4), progress=False)
    before = _records(work)
    # One film changes (a new sha256 in the manifest): only its shard is rebuilt, and the others keep their bytes.
    victim = sorted(load_manifest(work), key=lambda r: r["image_id"])[0]
    film = read_image(victim["path"])[0]
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(film[:, ::-1])).save(victim["path"])
    prepare_manifest(work, folders=[data], folds=2, test_size=0.5, progress=False)
    from tfflannel.patches.pipeline import read_records

    with pytest.raises(ValueError, match="changed since it was built"):
        read_records(work, "all", 1)
    summary = build_cache(work, segmenter, CacheSettings(shard_size=4), progress=False)
    assert summary["written"] == 1 and summary["skipped"] == 2 and summary["removed"] == 1
    after = _records(work)
    assert not np.array_equal(after[victim["image_id"]]["image"], before[victim["image_id"]]["image"])
    assert all(after[i]["raw"] == before[i]["raw"] for i in before if i != victim["image_id"])
    # A setting that changes the records (patches.input) rebuilds every shard; the old index is withdrawn at once.
    raw = CacheSettings(ViewSettings(input="raw"), shard_size=4)
    summary = build_cache(work, segmenter, raw, progress=False)
    assert summary["written"] == 3 and summary["removed"] == 3
    record = _records(work)[victim["image_id"]]
    film = read_image(victim["path"])[0]
    np.testing.assert_array_equal(record["image"], to_uint8(letterbox(film[..., None], 1024)[..., 0]).numpy()
                                  * record["mask"])


def test_new_shard_size_repacks_the_records_without_the_segmenter(tmp_path, sample_cls_dir, monkeypatch):
    import tfflannel.segmentation.cache as cache_module

    work, _ = _small_workdir(tmp_path, sample_cls_dir)
    segmenter = load_segmenter()
    build_cache(work, segmenter, CacheSettings(shard_size=4), progress=False)
    before, index_before = _records(work), read_csv(work / "cache" / "index.csv")

    def no_segmenter(*args):
        raise AssertionError("re-packing must not run the segmenter")

    monkeypatch.setattr(cache_module, "view_maker", no_segmenter)
    summary = build_cache(work, segmenter, CacheSettings(shard_size=5), progress=False)
    assert summary["complete"] and summary["written"] == 3 and summary["removed"] == 3
    assert len(list((work / "cache").glob("shard-*.tfrecord"))) == 3
    after, index_after = _records(work), read_csv(work / "cache" / "index.csv")
    assert set(after) == set(before) and all(after[i]["raw"] == before[i]["raw"] for i in before)
    assert [{k: v for k, v in r.items() if k != "shard"} for r in index_after] == \
        [{k: v for k, v in r.items() if k != "shard"} for r in index_before]
    assert [len(rows) for rows in _rows_per_shard(index_after)] == [5, 5, 2]
    assert json.loads((work / "cache" / "cache.json").read_text())["shard_size"] == 5


def _rows_per_shard(index):
    shards = {}
    for row in index:
        shards.setdefault(row["shard"], []).append(row)
    return [shards[name] for name in sorted(shards)]


@pytest.mark.slow
def test_new_seed_or_shard_size_never_reads_stale_records(tmp_path, sample_cls_dir):
    """prepare-data with another seed, then segment: the patch pipeline's train images are the new manifest's."""
    from tfflannel.patches.pipeline import decode_example, read_records

    work, data = _small_workdir(tmp_path, sample_cls_dir, seed=0)
    segmenter = load_segmenter()
    build_cache(work, segmenter, CacheSettings(shard_size=5), progress=False)
    for seed in (1, 2):
        rows = load_manifest(_small_workdir(tmp_path, sample_cls_dir, seed=seed)[0])
        summary = build_cache(work, segmenter, CacheSettings(shard_size=5), progress=False)
        assert summary["written"] == 0, "the cache holds no split: a new seed leaves it valid"
        test_ids = {r["image_id"] for r in rows if r["split"] == "test"}
        for fold in (1, 2):
            train = [item["image_id"].numpy().decode() for item in
                     map(decode_example, read_records(work, "train", fold))]
            expected = {r["image_id"] for r in rows if r["split"] == "train" and r["fold"] != str(fold)}
            assert set(train) == expected and len(train) == len(expected) and not set(train) & test_ids
    summary = build_cache(work, segmenter, CacheSettings(shard_size=7), progress=False)
    assert summary["removed"] == 3 and len(list((work / "cache").glob("shard-*"))) == 2
    ids = [e["image_id"].numpy().decode() for e in read_records(work, "all", 1)]
    assert sorted(ids) == sorted(r["image_id"] for r in rows), "each image once, no old-layout shard read"


@pytest.mark.slow
def test_kill_during_segment_then_rerun_gives_identical_records(tmp_path, sample_cls_dir):
    """kill -9 `segment` (a subprocess) once a seeded number of shards is written, rerun: records bit-identical."""
    work, _ = _small_workdir(tmp_path / "a", sample_cls_dir, per_class=4)
    reference, _ = _small_workdir(tmp_path / "b", sample_cls_dir, per_class=4)
    command = [sys.executable, "-m", "tfflannel.cli", "segment", "--set", "segmentation.shard_size=3",
               "--set", "segmentation.inference_batch=2"]
    env = dict(os.environ, PYTHONPATH=REPO)
    rng = np.random.default_rng(12)
    shards_done = int(rng.integers(1, 4))
    process = subprocess.Popen(command + ["--data", str(work)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240         # the event: the shard's part file appears (polled, never a fixed wait)
    while len(list((work / "cache" / "parts").glob("shard-*[0-9a-f].csv"))) < shards_done \
            and time.monotonic() < deadline:
        assert process.poll() is None, "segment ended before the kill point"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (work / "cache" / "cache.json").exists(), "killed before completion"
    (work / "cache" / ".shard-00004-of-00004-orphan.tfrecord.abcd.tmp").write_bytes(b"half a shard")
    for target in (work, reference):
        result = subprocess.run(command + ["--data", str(target)], cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    assert not list((work / "cache").rglob("*.tmp")), "orphan temp files are cleaned"
    assert sorted(p.name for p in (work / "cache").glob("shard-*")) == \
        sorted(p.name for p in (reference / "cache").glob("shard-*"))
    killed, clean = _records(work), _records(reference)
    assert set(killed) == set(clean)
    for image_id, record in clean.items():
        for key in ("image", "mask", "lung_bbox", "lung_fraction", "mask_ok"):
            np.testing.assert_array_equal(killed[image_id][key], record[key], err_msg=f"{image_id} {key}")
        assert killed[image_id]["raw"] == record["raw"], image_id


def test_corrupt_image_is_reported_and_others_written(tmp_path, sample_cls_dir):
    work, data = _small_workdir(tmp_path, sample_cls_dir)
    victim = load_manifest(work)[0]
    open(victim["path"], "wb").write(b"\x89PNG broken")
    result = CliRunner().invoke(main, ["segment", "--data", str(work), "--set", "segmentation.shard_size=4"])
    assert result.exit_code == 0, result.output
    assert "could not be read" in result.output
    errors = read_csv(work / "cache" / "errors.csv")
    assert [e["image_id"] for e in errors] == [victim["image_id"]]
    ids = set(_records(work))
    assert victim["image_id"] not in ids and len(ids) == 11


def test_failed_quality_check_keeps_full_image(tmp_path, sample_cls_dir):
    work, _ = _small_workdir(tmp_path, sample_cls_dir)
    settings = CacheSettings(ViewSettings(min_lung_fraction=0.99), shard_size=8)
    build_cache(work, load_segmenter(), settings, progress=False)
    paths = {r["image_id"]: r["path"] for r in load_manifest(work)}
    for record in read_cache_records(work / "cache"):
        film = read_image(paths[record["image_id"]])[0]
        content_h, content_w = letterbox_geometry(*film.shape, 128)
        assert record["mask_ok"] == 0
        assert record["mask"][: content_h * 8, : content_w * 8].all()
        assert record["mask"].sum() == content_h * content_w * 64
        view = to_uint8(letterbox(equalize_gamma_tf(tf.constant(film))[..., None], 1024)[..., 0]).numpy()
        np.testing.assert_array_equal(record["image"], view * record["mask"])


def test_evaluate_seg_cli_reports_per_image(tmp_path, sample_seg_dir):
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(main, ["evaluate-seg", "--pairs", str(sample_seg_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report) >= {"jaccard_mean", "dice_mean", "per_image"} and len(report["per_image"]) == 20
    assert all({"image", "jaccard", "dice"} <= set(r) for r in report["per_image"])
    # These 20 pairs were among the shipped model's training images: a regression guard, not a validation figure.
    assert report["jaccard_mean"] > 0.75
