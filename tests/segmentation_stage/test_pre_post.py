"""Pre-processing against the original's formula; post-processing on hand-made masks."""

import numpy as np
import pytest

from tfflannel.data.io import read_image
from tfflannel.segmentation.postprocess import (
    dice_coefficient,
    fill_holes,
    jaccard_index,
    keep_largest_components,
    lung_bbox,
    postprocess_lung_mask,
)
from tfflannel.segmentation.preprocess import (
    equalize_gamma,
    pad_to_square,
    preprocess_for_segmentation,
    resize_label_map,
    unletterbox,
)


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
        np.testing.assert_allclose(equalize_gamma(image), original_pre_processing(image), atol=1e-3)


def test_equalize_gamma_jsrt_mode_matches_original():
    raw = np.random.default_rng(0).integers(100, 4000, (64, 64)).astype(np.uint16)
    np.testing.assert_allclose(equalize_gamma(raw, jsrt_offset=10, invert=True),
                               original_pre_processing(raw, flag_jsrt=10), atol=1e-2)


def test_preprocess_letterboxes_without_stretching():
    image = np.full((100, 200), 50, np.uint8)
    image[:, 100:] = 200
    array, box = preprocess_for_segmentation(image, 64)
    assert array.shape == (64, 64, 1) and array.dtype == np.float32
    assert 0.0 <= array.min() and array.max() <= 1.0
    assert np.all(array[40:, :, 0] == 0), "bottom half is padding"
    mask = unletterbox((array[..., 0] > 0).astype(np.uint8), box)
    assert mask.shape == (100, 200)


def test_label_map_resize_is_nearest():
    labels = np.zeros((50, 100), np.uint8)
    labels[10:40, 10:90] = 3
    assert set(np.unique(resize_label_map(labels, 32))) == {0, 3}


def test_pad_to_square_keeps_content():
    square, box = pad_to_square(np.ones((3, 5), np.uint8))
    assert square.shape == (5, 5) and square[:3].all() and not square[3:].any() and box.side == 5


def test_postprocess_removes_spurious_blob_and_fills_hole():
    mask = np.zeros((60, 60), np.uint8)
    mask[10:50, 5:25] = 1     # left lung
    mask[10:50, 35:55] = 1    # right lung
    mask[25:30, 10:15] = 0    # hole inside the left lung
    mask[2:4, 28:30] = 1      # spurious blob
    cleaned = postprocess_lung_mask(mask)
    assert cleaned[2:4, 28:30].sum() == 0
    assert cleaned[25:30, 10:15].all()
    assert cleaned.sum() == 40 * 20 * 2


def test_keep_largest_and_fill_holes_alone():
    mask = np.zeros((10, 10), np.uint8)
    mask[0:3, 0:3] = 1
    mask[5:10, 5:10] = 1
    assert keep_largest_components(mask, 1)[0:3, 0:3].sum() == 0
    ring = np.zeros((7, 7), np.uint8)
    ring[1:6, 1:6] = 1
    ring[3, 3] = 0
    assert fill_holes(ring)[3, 3] == 1


def test_metrics_and_bbox():
    a = np.zeros((4, 4), np.uint8)
    a[:2] = 1
    b = np.zeros((4, 4), np.uint8)
    b[1:3] = 1
    assert jaccard_index(a, b) == pytest.approx(4 / 12)
    assert dice_coefficient(a, b) == pytest.approx(8 / 16)
    assert jaccard_index(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert lung_bbox(b) == (1, 0, 3, 4)
