"""Segmenter cross-validation: de-duplication, patient folds, NumPy scores, kill -9 resume; augmentation; flip TTA."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfflannel.config import load_config
from tfflannel.segmentation.augment import augment_pair, elastic_fields
from tfflannel.segmentation.cross_validation import (
    VARIANTS,
    compare_folds,
    cross_validate,
    deduplicate_pairs,
    patient_folds,
)
from tfflannel.segmentation.readers import SegPair, read_pairs

REPO = Path(__file__).resolve().parents[2]


def _copy_sample(sample_seg_dir, tmp_path, count):
    pairs = read_pairs(sample_seg_dir)[:count]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    copied = []
    for index, pair in enumerate(pairs):
        image, mask = tmp_path / "images" / f"{index}.png", tmp_path / "masks" / f"{index}.png"
        shutil.copy(pair.image, image)
        shutil.copy(pair.masks["lung"], mask)
        copied.append(SegPair(str(image), {"lung": str(mask)}, patient_id=f"p{index}"))
    return copied


def test_duplicates_are_dropped_and_their_patients_linked(sample_seg_dir, tmp_path):
    first = _copy_sample(sample_seg_dir, tmp_path, 4)
    again = tmp_path / "images" / "again.png"
    shutil.copy(first[0].image, again)                   # the same film under another patient id
    pairs = [*first, SegPair(str(again), first[0].masks, patient_id="other-id"),
             SegPair(first[2].image, first[2].masks, patient_id="p1")]   # p2's film also filed under p1
    kept, dropped = deduplicate_pairs(pairs)
    assert dropped == 2 and [p.image for p in kept] == [p.image for p in first]
    groups = [p.patient_id for p in kept]
    assert groups[1] == groups[2] and len(set(groups)) == 3


def test_patient_folds_keep_patients_together_balanced_and_seeded():
    pairs = [SegPair(f"{i}.png", patient_id=f"p{i // 3 if i < 9 else i}") for i in range(30)]
    folds = patient_folds(pairs, 5, seed=0)
    by_patient = {}
    for pair, fold in zip(pairs, folds, strict=True):
        by_patient.setdefault(pair.patient_id, set()).add(fold)
    assert all(len(f) == 1 for f in by_patient.values())
    counts = np.bincount(folds, minlength=5)
    assert counts.max() - counts.min() <= 3                 # at most one patient's films (3) apart
    assert folds == patient_folds(pairs, 5, seed=0) and folds != patient_folds(pairs, 5, seed=1)
    with pytest.raises(ValueError, match="patients"):
        patient_folds(pairs[:3], 5)


def test_strong_augmentation_is_seeded_keeps_labels_and_elastic_zero_is_identity():
    rng = np.random.default_rng(0)
    image = rng.random((64, 64, 1), dtype=np.float32)
    labels = (rng.random((64, 64)) > 0.5).astype(np.uint8)
    a = augment_pair(image, labels, np.random.default_rng(5), strength="strong")
    b = augment_pair(image, labels, np.random.default_rng(5), strength="strong")
    standard = augment_pair(image, labels, np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == image.shape and a[0].dtype == np.float32 and 0.0 <= a[0].min() and a[0].max() <= 1.0
    assert set(np.unique(a[1])) <= {0, 1} and not np.array_equal(a[0], standard[0])
    map_x, map_y = elastic_fields(np.random.default_rng(0), 64, alpha=0.0)
    import cv2

    np.testing.assert_array_equal(cv2.remap(labels, map_x, map_y, cv2.INTER_NEAREST), labels)
    with pytest.raises(ValueError, match="strength"):
        augment_pair(image, labels, rng, strength="extreme")


@pytest.fixture(scope="module")
def random_segmenter():
    import keras

    from tfflannel.models.fc_densenet import build_fc_densenet
    from tfflannel.segmentation.inference import Segmenter

    keras.utils.set_random_seed(3)
    return Segmenter(build_fc_densenet("fcdn_small", input_shape=(64, 64, 1)), 64, "lung", flip_tta=True)


def test_flip_tta_averages_the_mirrored_output_and_export_masks_equal_the_cache(random_segmenter, sample_cls_dir):
    from tfflannel.data.io import read_image
    from tfflannel.film_pipeline import ViewSettings
    from tfflannel.segmentation.view_maker import ViewMaker
    from tfflannel.serving.pipeline import InferencePipeline

    batch = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    plain = random_segmenter.model.predict_on_batch(batch)
    mirrored = random_segmenter.model.predict_on_batch(batch[:, :, ::-1])
    expected = (plain + mirrored[:, :, ::-1]) / 2
    np.testing.assert_allclose(random_segmenter.probabilities(batch).numpy(), expected, atol=1e-6)
    assert np.abs(expected - plain).max() > 1e-3              # the mirror changes something: the test can fail

    films = [read_image(path)[0] for path in sorted(sample_cls_dir.rglob("*.png"))[:3]]
    view = ViewSettings(size=128)
    cached = ViewMaker(random_segmenter, view).views(films, batch_size=4)
    pipeline = InferencePipeline(random_segmenter, [], view=view)
    for film, record in zip(films, cached, strict=True):
        images, masks, _, _ = pipeline.views(lambda i, f=tf.constant(film): f, 1)
        np.testing.assert_array_equal(masks.numpy()[0], record["mask"])


@pytest.mark.slow
def test_cross_validation_killed_resumes_and_scores_against_numpy(sample_seg_dir, tmp_path):
    """`tools/train_segmenter.py --stage cv`, 2 folds of a tiny recipe, is killed (SIGKILL) inside fold 2.

    The rerun keeps fold 1 as it was and finishes fold 2 from its checkpoint; fold scores are NumPy means of
    the held-out films, fold 1's equals `evaluate-seg`'s; a further rerun redoes nothing.
    """
    from tfflannel.segmentation.inference import evaluate_segmenter, load_segmenter

    pairs = read_pairs(sample_seg_dir)[:8]
    listing = tmp_path / "pairs.csv"                      # 8 films, the first two listed twice
    listing.write_text("image,mask,patient_id\n" + "".join(
        f"{p.image},{p.masks['lung']},{p.patient_id}\n" for p in pairs + pairs[:2]))
    recipe = {"model": "fcdn_test", "input_size": 32, "epochs": 2, "batch_size": 4, "learning_rate": 1e-3,
              "loss": "dice_weighted_ce", "seed": 0}
    out = tmp_path / "run"
    command = [sys.executable, str(REPO / "tools" / "train_segmenter.py"), "--stage", "cv", "--cv", "2",
               "--pairs", str(listing), "--out", str(out), "--set", "segmentation.augment=false",
               *(item for key, value in recipe.items() for item in (f"--{key.replace('_', '-')}", str(value)))]
    log = tmp_path / "killed.log"
    checkpoint = out / "cv" / "fold-2" / "resume" / "state.json"      # fold 2's first epoch is committed
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, cwd=REPO, stdout=stream, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300     # the event: fold 2's first commit appears (polled)
        while not checkpoint.is_file() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-2000:]
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    assert checkpoint.is_file(), f"fold 2 never committed an epoch in 300 s:\n{log.read_text()[-2000:]}"
    assert (out / "cv" / "fold-1" / "scores.json").is_file()
    assert not (out / "cv" / "fold-2" / "scores.json").exists() and not (out / "cv" / "cv.json").exists()
    done = {p: p.read_bytes() for p in (out / "cv" / "fold-1" / "model.keras", out / "cv" / "fold-1" / "scores.json")}

    config = load_config(None, [f"segmentation.{key}={value}" for key, value in {**recipe, "augment": False}.items()])
    out = out / "cv"
    result = cross_validate(config, pairs + pairs[:2], out, folds=2, progress=False, echo=lambda line: None)
    assert done == {p: p.read_bytes() for p in done}, "the finished fold is kept as it was"
    assert len((out / "fold-2" / "history.csv").read_text().splitlines()) == 1 + recipe["epochs"]
    assert result["pairs"] == 8 and result["duplicates_dropped"] == 2 and set(result["summary"]) == set(VARIANTS)
    held = {fold: [p for p in pairs if result["fold_of"][p.image] == fold] for fold in (1, 2)}
    assert {p.patient_id for p in held[1]}.isdisjoint({p.patient_id for p in held[2]})
    for fold in (1, 2):
        metrics = json.loads((out / f"fold-{fold}" / "metrics.json").read_text())
        assert metrics["train_pairs"] == 8 - len(held[fold]) and metrics["validation_pairs"] == 0
    # fold 1's score against evaluate-seg's own path; each fold's mean against its per-image scores
    scored = evaluate_segmenter(load_segmenter(out / "fold-1"), held[1], progress=False)
    clean = result["summary"]["clean"]
    assert clean["per_fold_jaccard"][0] == pytest.approx(np.mean([r["jaccard"] for r in scored["per_image"]]))
    per_fold = [np.mean([r["jaccard"] for r in json.loads((out / f"fold-{fold}" / "scores.json").read_text())
                         ["scores"]["clean"]]) for fold in (1, 2)]
    np.testing.assert_allclose(clean["per_fold_jaccard"], per_fold, rtol=1e-6)
    assert clean["jaccard_mean"] == pytest.approx(np.mean(per_fold))
    assert clean["jaccard_std"] == pytest.approx(np.std(per_fold, ddof=1))
    assert len(result["worst"]) == 8 and (out / "cv_worst.png").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name in ("model.keras", "scores.json",
                                                                           "cv_worst.png")}
    again = cross_validate(config, pairs, out, folds=2, progress=False, echo=lambda line: None)
    assert again["summary"] == result["summary"]
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}, "nothing finished is redone"


def test_compare_folds_is_the_per_fold_difference_and_refuses_other_folds():
    """The shipping rule's figures: candidate minus reference per fold (NumPy), on the same folds only."""
    rng = np.random.default_rng(3)
    fold_of = {f"film{i}.png": i % 5 + 1 for i in range(20)}

    def cv(per_fold):
        return {"fold_of": dict(fold_of), "summary": {"clean+flip": {"per_fold_jaccard": list(per_fold)}}}

    reference = rng.uniform(0.85, 0.92, 5)
    for shift, every in ((np.array([0.01, 0.02, 0.001, 0.03, 0.005]), True),
                         (np.array([0.01, -0.002, 0.01, 0.01, 0.01]), False)):
        compared = compare_folds(cv(reference), cv(reference + shift))
        np.testing.assert_allclose(compared["deltas"], shift, atol=1e-12)
        assert compared["higher"] == int(np.sum(shift > 0)) and compared["every_fold"] is every
    moved = cv(reference)
    moved["fold_of"]["film0.png"] = 2
    with pytest.raises(ValueError, match="same folds"):
        compare_folds(cv(reference), moved)


def test_shipped_recipe_file_is_the_recipe_the_shipped_segmenter_records():
    """tools/train_segmenter.py's default recipe file reruns exactly the shipped segmenter's recipe."""
    import json

    from tfflannel.config import load_config, packaged_config
    from tfflannel.segmentation.cross_validation import RECIPE_KEYS

    config = load_config(packaged_config("segmenter_shipped.yaml")).segmentation
    descriptor = json.loads((REPO / "tfflannel" / "weights" / "lung_segmenter.json").read_text())
    assert {key: getattr(config, key) for key in RECIPE_KEYS} == {key: descriptor["training"][key]
                                                                  for key in RECIPE_KEYS}
