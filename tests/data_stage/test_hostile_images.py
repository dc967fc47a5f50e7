"""Hostile images (a decompression bomb, a thumbnail) are per-file errors in every stage that reads images:
prepare-data lists them in rejected.csv, segment in cache/errors.csv, predict reports them by name and
still classifies the others."""

import shutil

import numpy as np
import pytest
from PIL import Image

from tests.data_stage.test_io import write_png_header
from tfflannel.data.io import read_image, set_image_limits


@pytest.fixture
def hostile_folder(tmp_path):
    """DIR/covid19/{bomb.png, tiny.png}: a 14000 x 14000 header and a 40 x 40 image."""
    set_image_limits()
    root = tmp_path / "hostile"
    (root / "covid19").mkdir(parents=True)
    write_png_header(root / "covid19" / "bomb.png", 14000, 14000)
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(root / "covid19" / "tiny.png")
    return root


def test_prepare_data_rejects_hostile_images_and_keeps_the_rest(tmp_path, sample_cls_dir, hostile_folder):
    from tfflannel.data.manifest import prepare_manifest
    from tfflannel.utils import read_csv

    out = tmp_path / "work"
    rows = prepare_manifest(out, folders=[sample_cls_dir, hostile_folder], folds=2, test_size=0.25, progress=False)
    assert len(rows) == len(list(sample_cls_dir.glob("*/*.png")))
    reasons = {row["path"].rsplit("/", 1)[-1]: row["reason"] for row in read_csv(out / "rejected.csv")}
    assert "exceeds the limit of 100 megapixels" in reasons["bomb.png"]
    assert "smaller than the minimum side of 64 px" in reasons["tiny.png"]


def test_segment_lists_hostile_images_in_errors_csv(tmp_path, sample_cls_dir, hostile_folder):
    from tfflannel.data.manifest import MANIFEST_COLUMNS, prepare_manifest
    from tfflannel.film_pipeline import ViewSettings
    from tfflannel.segmentation.cache import CacheSettings, build_cache
    from tfflannel.segmentation.inference import load_segmenter
    from tfflannel.utils import read_csv, write_csv_atomic

    work = tmp_path / "work"
    rows = prepare_manifest(work, folders=[sample_cls_dir], folds=2, test_size=0.25, progress=False)
    # Two manifest files replaced after prepare-data by hostile ones: segment must skip them, not crash.
    keep = rows[:4]
    for row, name in zip(keep[:2], ["bomb.png", "tiny.png"], strict=True):
        target = tmp_path / f"replaced_{name}"
        shutil.copy(hostile_folder / "covid19" / name, target)
        row["path"] = str(target)
    write_csv_atomic(work / "manifest.csv", keep, MANIFEST_COLUMNS)
    summary = build_cache(work, load_segmenter(), CacheSettings(ViewSettings(size=128), shard_size=8), progress=False)
    assert summary["errors"] == 2 and summary["complete"]
    errors = {row["image_id"]: row["reason"] for row in read_csv(work / "cache" / "errors.csv")}
    assert "megapixels" in errors[keep[0]["image_id"]] and "minimum side" in errors[keep[1]["image_id"]]
    assert sorted(row["image_id"] for row in read_csv(work / "cache" / "index.csv")) == \
        sorted(row["image_id"] for row in keep[2:])


def test_predict_reports_hostile_files_by_name_and_classifies_the_others(tmp_path, sample_cls_dir, hostile_folder):
    from tfflannel.serving.predict import predict_files

    good = sorted(sample_cls_dir.glob("normal/*.png"))[:2]
    folder = tmp_path / "inputs"
    folder.mkdir()
    for path in good + sorted((hostile_folder / "covid19").glob("*.png")):
        shutil.copy(path, folder / path.name)

    def mean_intensity_model(images):
        """A deterministic function of the pixels standing in for the SavedModel: predict_files is under test."""
        mean = images.reshape(len(images), -1).mean(axis=1) / 255.0
        probabilities = np.stack([mean, 1 - mean, np.zeros_like(mean), np.zeros_like(mean)], axis=1)
        return {"probabilities": probabilities, "lung_fraction": mean, "mask_ok": np.ones(len(images), bool)}

    records, failures = predict_files(mean_intensity_model, [folder], batch_size=4, progress=False)
    assert sorted(f["file"].rsplit("/", 1)[-1] for f in failures) == ["bomb.png", "tiny.png"]
    assert all(f["error"] for f in failures)
    assert [r["file"].rsplit("/", 1)[-1] for r in records] == sorted(p.name for p in good)
    for record, path in zip(records, sorted(good, key=lambda p: p.name), strict=True):
        expected = read_image(path)[0].mean() / 255.0
        assert record["probabilities"]["covid19"] == pytest.approx(expected, abs=1e-5)
