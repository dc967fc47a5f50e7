"""Segmentation scores on binary (H, W) masks: Jaccard index and Dice coefficient (NumPy)."""

from __future__ import annotations

import numpy as np


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
