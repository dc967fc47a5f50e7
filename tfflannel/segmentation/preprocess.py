"""Segmentation pre-processing, one definition for training, `segment`, evaluation and export.

The original (Patched FLANNEL / Oh-Park-Ye) equalises the histogram, applies
gamma 0.5 and feeds 256x256 images. We do the same, letterboxing to a square
(pad, never stretch) and scaling to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def equalize_gamma(image, gamma=0.5, jsrt_offset=0, invert=False):
    """Histogram equalisation followed by gamma, as the original `pre_processing`.

    The CDF of the grey levels from the image minimum to its maximum is rescaled
    linearly to [0, 255] (levels below the minimum map to 0), then raised to
    `gamma`. JSRT raw films use `jsrt_offset=10, invert=True` (reversed polarity).

    Args:
        image: (H, W) unsigned integer array (uint8 or uint16).
        gamma: float. Defaults to `0.5`.
        jsrt_offset: int. Added to the low CDF bound, as the original's `flag_jsrt`. Defaults to `0`.
        invert: bool. Map high CDF to dark. Defaults to `False`.

    Returns:
        (H, W) float32 array in [0, 255].
    """
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.integer) or image.ndim != 2:
        raise ValueError(f"equalize_gamma expects a 2-D integer image. Received: dtype={image.dtype}, shape={image.shape}.")
    hist = np.bincount(image.ravel(), minlength=int(image.max()) + 1)
    cdf = np.cumsum(hist, dtype=np.float64)
    low = cdf[int(image.min())] + jsrt_offset
    high = cdf[-1]
    valid = (cdf >= low) & (cdf <= high) & (cdf > 0)
    if not valid.any() or cdf[valid].max() == cdf[valid].min():
        return np.zeros(image.shape, np.float32)
    lo, hi = cdf[valid].min(), cdf[valid].max()
    lut = (cdf - lo) * 255.0 / (hi - lo)
    if invert:
        lut = 255.0 - lut
    lut = np.where(valid, lut, 0.0).astype(np.float32)
    lut = np.power(lut / 255.0, gamma) * 255.0
    return lut.astype(np.float32)[image]


@dataclass(frozen=True)
class Letterbox:
    """Where an (height, width) image sits inside its padded square (pad bottom/right)."""

    height: int
    width: int

    @property
    def side(self):
        return max(self.height, self.width)


def pad_to_square(image, value=0):
    """Pad bottom/right to a square; returns (square, Letterbox)."""
    height, width = image.shape[:2]
    side = max(height, width)
    pad = [(0, side - height), (0, side - width)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, constant_values=value), Letterbox(height, width)


def preprocess_for_segmentation(image, size=256, gamma=0.5):
    """(H, W) uint8 -> ((size, size, 1) float32 in [0, 1], Letterbox)."""
    equalized = equalize_gamma(image, gamma=gamma)
    square, box = pad_to_square(equalized)
    resized = cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA if square.shape[0] > size else cv2.INTER_LINEAR)
    return (np.clip(resized, 0, 255) / 255.0).astype(np.float32)[..., None], box


def resize_label_map(labels, size):
    """Resize an integer label map (or binary mask) to (size, size) letterboxed, nearest neighbour."""
    square, _ = pad_to_square(np.asarray(labels, np.uint8))
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_NEAREST)


def unletterbox(mask_square, box):
    """A (S, S) mask predicted on the letterboxed square -> (height, width) at the original resolution."""
    full = cv2.resize(np.asarray(mask_square, np.uint8), (box.side, box.side), interpolation=cv2.INTER_NEAREST)
    return full[: box.height, : box.width]
