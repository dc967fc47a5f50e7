"""Mask confidence and flip disagreement (`film_pipeline.segment_quality`) against NumPy oracles; the QC fallback."""

import numpy as np
import pytest
import tensorflow as tf

from tests import oracles
from tfflannel.errors import InputError
from tfflannel.film_pipeline import ViewSettings, flip_disagreement, mask_confidence, masked_view, segment_quality

LUNG = (1,)


def crafted_outputs(seed=0, size=32):
    """Two films' 2-class outputs on the film and on its mirror (not mirrored back), deliberately unlike.

    Each film: two lung blobs (one with a hole), a small stray blob the clean-up removes, uncertain edges and
    noise; the mirror pass sees the right lung shifted and a blob the film pass does not, so the masks differ.
    """
    rng = np.random.default_rng(seed)
    films, mirrors = [], []
    for film in range(2):
        lung = rng.uniform(0.0, 0.3, (size, size))
        lung[4:26, 3:13] = rng.uniform(0.55, 0.99, (22, 10))
        lung[5:27, 18:29] = rng.uniform(0.51, 0.95, (22, 11))
        lung[12:15, 6:9] = 0.1                                   # a hole, filled by the clean-up
        lung[29:31, 1:3] = 0.9                                   # a stray blob, removed
        mirror = lung.copy()
        mirror[5:27, 18:29] = 0.2
        mirror[6:28, 17 + film:28 + film] = rng.uniform(0.6, 0.9, (22, 11))
        mirror[0:3, 13:17] = 0.8 if film == 0 else 0.2          # joins nothing; small; removed
        films.append(np.stack([1 - lung, lung], -1))
        mirrors.append(np.stack([1 - mirror, mirror], -1)[:, ::-1])   # the network saw the mirror image
    return np.array(films, np.float32), np.array(mirrors, np.float32)


@pytest.mark.parametrize("flip_tta", [False, True], ids=["no_tta", "flip_tta"])
def test_segment_quality_matches_numpy_oracle(flip_tta):
    probabilities, flipped = crafted_outputs()
    masks, confidence, disagreement = oracles.segment_quality(probabilities, flipped, LUNG, flip_tta)
    got = segment_quality(tf.constant(probabilities), tf.constant(flipped), LUNG, flip_tta)
    np.testing.assert_array_equal(got["masks"].numpy(), masks)
    np.testing.assert_allclose(got["mask_confidence"].numpy(), confidence, rtol=1e-6)
    np.testing.assert_allclose(got["flip_disagreement"].numpy(), disagreement, rtol=1e-6)
    assert (disagreement > 0.02).all() and confidence.min() > 0.5, "the crafted passes differ (could fail)"
    assert disagreement[0] != disagreement[1]
    # Compiled with XLA (as `segment` runs it): the same masks, numbers within float32 rounding.
    compiled = tf.function(lambda p, f: segment_quality(p, f, LUNG, flip_tta), jit_compile=True)(
        tf.constant(probabilities), tf.constant(flipped))
    np.testing.assert_array_equal(compiled["masks"].numpy(), masks)
    np.testing.assert_allclose(compiled["mask_confidence"].numpy(), confidence, rtol=1e-6)
    np.testing.assert_allclose(compiled["flip_disagreement"].numpy(), disagreement, rtol=1e-6)


def test_confidence_and_disagreement_edge_cases():
    empty = np.zeros((1, 4, 4), bool)
    full = np.ones((1, 4, 4), bool)
    probabilities = np.full((1, 4, 4, 2), 0.5, np.float32)
    assert mask_confidence(probabilities, empty).numpy()[0] == 0.0
    assert mask_confidence(probabilities, full).numpy()[0] == pytest.approx(0.5)
    assert flip_disagreement(empty, empty).numpy()[0] == 0.0
    assert flip_disagreement(full, full).numpy()[0] == 0.0
    half = full.copy()
    half[:, :2] = False
    assert flip_disagreement(full, half).numpy()[0] == pytest.approx(0.5)
    assert flip_disagreement(empty, half).numpy()[0] == 1.0


def test_confidence_bounds_flip_mask_ok_and_are_checked():
    film = tf.constant(np.full((40, 40), 120, np.uint8))
    square = np.zeros((8, 8), bool)
    square[1:7, 1:4] = True                                       # lung fraction 18/64: passes the fraction QC
    base = masked_view(film, square, ViewSettings(size=16))
    assert bool(base["mask_ok"])
    for settings, confidence, disagreement, ok in [
            (ViewSettings(size=16, min_mask_confidence=0.9), 0.95, 0.0, True),
            (ViewSettings(size=16, min_mask_confidence=0.9), 0.85, 0.0, False),
            (ViewSettings(size=16, max_flip_disagreement=0.1), 0.5, 0.05, True),
            (ViewSettings(size=16, max_flip_disagreement=0.1), 0.5, 0.2, False)]:
        view = masked_view(film, square, settings, None, tf.constant(confidence), tf.constant(disagreement))
        assert bool(view["mask_ok"]) is ok
        if not ok:      # the fallback: the whole film
            assert view["mask"].numpy().all()
    with pytest.raises(ValueError, match="min_mask_confidence"):
        masked_view(film, square, ViewSettings(size=16, min_mask_confidence=0.9))
    with pytest.raises(InputError, match="segmentation.max_flip_disagreement must be in"):
        ViewSettings(max_flip_disagreement=1.5)
    # Off (the defaults): not part of the cache key, so existing caches and runs keep theirs.
    assert set(ViewSettings().key()) == {"size", "min_lung_fraction", "max_lung_fraction", "input"}
    assert ViewSettings(min_mask_confidence=0.9).key()["min_mask_confidence"] == 0.9
