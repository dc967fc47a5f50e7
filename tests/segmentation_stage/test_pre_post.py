"""The film pipeline's pre-processing against the original's formula; its clean-up against SciPy."""

import numpy as np
import pytest
import tensorflow as tf

from tests import oracles
from tfflannel.data.io import read_image
from tfflannel.film_pipeline import (
    clean_lung_mask,
    equalize_gamma_tf,
    fill_holes,
    keep_largest_components,
    label_components,
    letterbox,
    lung_bbox,
    segmenter_input,
)
from tfflannel.segmentation.metrics import dice_coefficient, jaccard_index
from tfflannel.segmentation.preprocess import resize_label_map


def original_pre_processing(images, flag_jsrt=0, rescale_bit=8, gamma=0.5):
    """NumPy reimplementation of the original `pre_processing` / `hist_specification` (masked arrays)."""
    bit_output = 1 << rescale_bit
    num_bin = int(images.max()) + 1  # NumPy 1.x promoted uint8 255 + 1 to 256; NumPy 2 would wrap
    hist, _ = np.histogram(images.flatten(), num_bin, [0, num_bin])
    cdf = np.ma.masked_equal(hist.cumsum(), 0)
    hist_low = np.sum(hist[:images.min() + 1]) + flag_jsrt
    hist_high = cdf.max() - np.sum(hist[num_bin:])
    cdf_m = np.ma.masked_outside(cdf, hist_low, hist_high)
    if not flag_jsrt:
        cdf_m = (cdf_m - cdf_m.min()) * (bit_output - 1) / (cdf_m.max() - cdf_m.min())
    else:
        cdf_m = (bit_output - 1) - (cdf_m - cdf_m.min()) * (bit_output - 1) / (cdf_m.max() - cdf_m.min())
    cdf = np.ma.filled(cdf_m.astype("float32"), 0)
    cdf = pow(cdf / (bit_output - 1), gamma) * (bit_output - 1)
    return cdf[images].astype("float32")


def test_equalize_gamma_matches_original_on_real_images(sample_cls_dir, sample_seg_dir):
    paths = [next((sample_cls_dir / "covid19").glob("*.png")), next((sample_cls_dir / "normal").glob("kermany*.png")),
             next((sample_seg_dir / "images").glob("*.png"))]
    for path in paths:
        image, _ = read_image(path)
        np.testing.assert_allclose(equalize_gamma_tf(tf.constant(image)).numpy(), original_pre_processing(image),
                                   atol=1e-3)


def test_equalize_gamma_16_bit_matches_original():
    raw = np.random.default_rng(0).integers(100, 4000, (64, 64)).astype(np.uint16)
    np.testing.assert_allclose(equalize_gamma_tf(tf.constant(raw)).numpy(), original_pre_processing(raw), atol=1e-2)


def test_segmenter_input_letterboxes_without_stretching():
    image = np.full((100, 200), 50, np.uint8)
    image[:, 100:] = 200
    array = segmenter_input(tf.constant(image), 64).numpy()
    assert array.shape == (64, 64, 1) and array.dtype == np.float32
    assert 0.0 <= array.min() and array.max() <= 1.0
    assert np.all(array[33:, :, 0] == 0), "bottom half is padding"
    assert np.all(array[:31, 33:, 0] > 0.99), "the bright half fills the top"


def test_letterbox_is_a_plain_resize_of_the_padded_square():
    image = np.random.default_rng(1).integers(0, 255, (30, 60, 1)).astype(np.float32)
    square = np.zeros((60, 60, 1), np.float32)
    square[:30] = image
    np.testing.assert_array_equal(letterbox(tf.constant(image), 120, "nearest").numpy(),
                                  np.repeat(np.repeat(square, 2, axis=0), 2, axis=1))


def test_label_map_resize_is_nearest():
    labels = np.zeros((50, 100), np.uint8)
    labels[10:40, 10:90] = 3
    assert set(np.unique(resize_label_map(labels, 32))) == {0, 3}


def test_clean_up_removes_spurious_blob_and_fills_hole():
    mask = np.zeros((60, 60), np.uint8)
    mask[10:50, 5:25] = 1     # left lung
    mask[10:50, 35:55] = 1    # right lung
    mask[25:30, 10:15] = 0    # hole inside the left lung
    mask[2:4, 28:30] = 1      # spurious blob
    cleaned = clean_lung_mask(tf.constant(mask)).numpy()
    assert cleaned[2:4, 28:30].sum() == 0
    assert cleaned[25:30, 10:15].all()
    assert cleaned.sum() == 40 * 20 * 2


def test_keep_largest_and_fill_holes_alone():
    mask = np.zeros((10, 10), np.uint8)
    mask[0:3, 0:3] = 1
    mask[5:10, 5:10] = 1
    assert keep_largest_components(tf.constant(mask), 1).numpy()[0:3, 0:3].sum() == 0
    ring = np.zeros((7, 7), np.uint8)
    ring[1:6, 1:6] = 1
    ring[3, 3] = 0
    assert fill_holes(tf.constant(ring)).numpy()[3, 3]


@pytest.mark.parametrize("density", [0.35, 0.5, 0.6])
def test_clean_up_equals_scipy_on_random_masks(density):
    """Components (8-connected), two largest, holes (4-connected background): SciPy is the oracle."""
    rng = np.random.default_rng(int(density * 100))
    for _ in range(6):
        mask = (rng.random((37, 53)) < density).astype(np.uint8)
        labels = label_components(tf.constant(mask)).numpy()
        from scipy import ndimage

        scipy_labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
        assert len(np.unique(labels[labels > 0])) == count
        np.testing.assert_array_equal(clean_lung_mask(tf.constant(mask)).numpy().astype(np.uint8),
                                      oracles.clean_lung_mask(mask))


def test_clean_up_equals_scipy_on_real_segmenter_masks(sample_seg_dir):
    """Raw argmax masks of the shipped segmenter on real films, cleaned in TF and by SciPy."""
    from tfflannel.segmentation.inference import load_segmenter

    segmenter = load_segmenter()
    films = [read_image(p)[0] for p in sorted((sample_seg_dir / "images").glob("*.png"))[:6]]
    batch = tf.stack([segmenter.prepare(tf.constant(f))[0] for f in films])
    for probabilities in segmenter.probabilities(batch).numpy():
        raw = np.isin(probabilities.argmax(-1), segmenter.lung_classes).astype(np.uint8)
        np.testing.assert_array_equal(clean_lung_mask(tf.constant(raw)).numpy().astype(np.uint8),
                                      oracles.clean_lung_mask(raw))


def test_metrics_and_bbox():
    a = np.zeros((4, 4), np.uint8)
    a[:2] = 1
    b = np.zeros((4, 4), np.uint8)
    b[1:3] = 1
    assert jaccard_index(a, b) == pytest.approx(4 / 12)
    assert dice_coefficient(a, b) == pytest.approx(8 / 16)
    assert jaccard_index(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert lung_bbox(tf.constant(b)).numpy().tolist() == [1, 0, 3, 4]
