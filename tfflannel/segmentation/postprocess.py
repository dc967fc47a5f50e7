"""Lung-mask post-processing and quality control (small pure functions on (H, W) masks)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def keep_largest_components(mask, n=2):
    """Keep the `n` largest 8-connected foreground components of a binary (H, W) mask."""
    mask = np.asarray(mask) > 0
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count <= n:
        return mask.astype(np.uint8)
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:n] + 1
    return np.isin(labels, keep).astype(np.uint8)


def fill_holes(mask):
    """Fill background regions fully enclosed by foreground in a binary (H, W) mask."""
    return ndimage.binary_fill_holes(np.asarray(mask) > 0).astype(np.uint8)


def postprocess_lung_mask(mask, components=2):
    """Largest `components` components, then holes filled: the mask every stage uses."""
    return fill_holes(keep_largest_components(mask, components))


def lung_fraction(mask):
    """Share of pixels inside the lung mask."""
    mask = np.asarray(mask)
    return float((mask > 0).mean()) if mask.size else 0.0


def lung_bbox(mask):
    """(ymin, xmin, ymax, xmax) of the mask's foreground, exclusive max; zeros if empty."""
    rows = np.flatnonzero(np.asarray(mask).any(axis=1))
    cols = np.flatnonzero(np.asarray(mask).any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def jaccard_index(prediction, target):
    """|A and B| / |A or B| of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(prediction) > 0, np.asarray(target) > 0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def dice_coefficient(prediction, target):
    """2 |A and B| / (|A| + |B|) of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(prediction) > 0, np.asarray(target) > 0
    total = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else 1.0
