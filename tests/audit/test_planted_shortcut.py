"""The audit is proven to catch a shortcut (issue 22, point 5).

From the bundled sample, one class (`normal`: adults and children in both the training folds and the test
partition of the default split) gets a white square in the top-left corner of every film, far outside the
lungs. A global `test_cnn` learner trained on those films must list that class in `shortcut_classes` (it still
recognises it on `lungs_removed` input); a patch learner trained on the same films must not (the marker is outside
the lung mask it sees). Trained on the same films without the marker, a global learner scores that class clearly
lower on `lungs_removed` input, so the verdict follows the planted shortcut, not chance. Fixed seeds (split,
weights, epochs); the margins measured are in docs/evaluation.md.
"""

import json
import shutil

import cv2
import pytest

MARKED = "normal"
SETTINGS = ["segmentation.cache_size=256", "global_learner.resize=112", "global_learner.crop_size=112",
            "global_learner.batch_size=8", "global_learner.learning_rate=0.001", "global_learner.epochs=60",
            "global_learner.precise_bn_batches=0", "patched.patch_size=48", "patched.batch_size=16",
            "patched.patches_per_image=4", "patched.learning_rate=0.001", "patched.epochs=4", "patched.val_patches=4",
            "patched.precise_bn_batches=0", "inference.k=8", "audit.bootstrap_resamples=200"]


def plant_marker(image):
    """A white square, 15 % of the long side, 3 % in from the top-left corner (outside every lung mask)."""
    height, width = image.shape
    side, top, left = int(0.15 * max(height, width)), int(0.03 * height), int(0.03 * width)
    image[top:top + side, left:left + side] = 255
    return image


def _audit(root, marked, with_patch):
    from tfflannel.audit.run import audit_runs
    from tfflannel.config import load_config
    from tfflannel.data.manifest import prepare_manifest
    from tfflannel.film_pipeline import ViewSettings
    from tfflannel.learners.train import train_global_learner, train_patch_learner
    from tfflannel.sample import CLS_DIR
    from tfflannel.segmentation.cache import CacheSettings, build_cache
    from tfflannel.segmentation.inference import load_segmenter

    films = root / "films"
    shutil.copytree(CLS_DIR, films)
    if marked:
        for path in (films / MARKED).iterdir():
            cv2.imwrite(str(path), plant_marker(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)))
    work, segmenter = root / "work", load_segmenter()
    prepare_manifest(work, folders=[films], folds=3, test_size=0.25, progress=False)
    config = load_config(overrides=SETTINGS)
    runs = [root / "global"]
    train_global_learner(config, "test_cnn", 1, work, runs[0], progress=False)
    if with_patch:
        build_cache(work, segmenter, CacheSettings(view=ViewSettings(size=256), shard_size=16), progress=False)
        runs.append(root / "patch")
        train_patch_learner(config, "test_cnn", 1, work, runs[1], progress=False)
    result = audit_runs(runs, work, root / "audit", config, segmenter=segmenter, progress=False)
    assert json.loads((root / "audit" / "audit.json").read_text()) == result
    return {learner["mode"]: learner for learner in result["learners"]}


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    return _audit(tmp_path_factory.mktemp("marked"), marked=True, with_patch=True)


@pytest.fixture(scope="module")
def unmarked(tmp_path_factory):
    return _audit(tmp_path_factory.mktemp("unmarked"), marked=False, with_patch=False)


@pytest.mark.slow
def test_a_global_learner_on_marked_films_is_flagged_for_that_class_a_patch_learner_is_not(marked):
    learner = marked["global"]
    f1 = {c: m["f1"][MARKED] for c, m in learner["conditions"].items()}
    assert MARKED in learner["shortcut_classes"] and learner["shortcut"], f1
    assert f1["lungs_removed"] >= 0.9, f1                      # the marker alone names the class
    patch = marked["patch"]
    assert MARKED not in patch["shortcut_classes"], {c: m["f1"][MARKED] for c, m in patch["conditions"].items()}
    assert patch["conditions"]["lungs_only"] == patch["conditions"]["normal"]     # its normal input is lungs only
    assert 0.5 < patch["lung_attention"] <= 1.0 and learner["lung_attention"] < patch["lung_attention"]
    assert set(learner) >= {"run", "mode", "conditions", "lung_attention", "source_probe", "shortcut",
                            "shortcut_classes"}
    assert set(learner["source_probe"]) >= {"auc", "ci_low", "ci_high", "n"}


@pytest.mark.slow
def test_without_the_marker_the_class_is_clearly_lower_on_lungs_removed_input(marked, unmarked):
    with_marker = marked["global"]["conditions"]["lungs_removed"]["f1"][MARKED]
    without = unmarked["global"]["conditions"]["lungs_removed"]["f1"][MARKED]
    print(f"{MARKED} F1 on lungs_removed input: {with_marker:.3f} with the marker, {without:.3f} without")
    assert with_marker - without >= 0.4
    assert MARKED not in unmarked["global"]["shortcut_classes"]
