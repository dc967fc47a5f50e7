"""Independent NumPy/SciPy/OpenCV references the TensorFlow film pipeline is tested against (test-only code)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def keep_largest_components(mask, n=2):
    """Keep the `n` largest 8-connected foreground components of a binary (H, W) mask (SciPy labelling)."""
    mask = np.asarray(mask) > 0
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count <= n:
        return mask.astype(np.uint8)
    sizes = np.bincount(labels.ravel())[1:]
    last = ndimage.maximum(np.arange(labels.size).reshape(labels.shape), labels, np.arange(1, count + 1))
    keep = np.lexsort((last, -sizes))[:n] + 1     # largest first; ties: the one whose last raster pixel comes first
    return np.isin(labels, keep).astype(np.uint8)


def fill_holes(mask):
    """Fill background regions fully enclosed by foreground (SciPy)."""
    return ndimage.binary_fill_holes(np.asarray(mask) > 0).astype(np.uint8)


def clean_lung_mask(mask, components=2):
    """Largest `components` components, then holes filled."""
    return fill_holes(keep_largest_components(mask, components))


def letterbox_geometry(height, width, size):
    """(content rows, content cols) of a film letterboxed (pad bottom/right) to `size`."""
    side = max(height, width)
    return round(height * size / side), round(width * size / side)
def sample_patch_centres(mask, k, rng):
    """Draw `k` (row, col) centres uniformly from the foreground pixels of a (H, W) mask.

    Args:
        mask: (H, W) array; > 0 is lung.
        k: int. Number of centres (with replacement).
        rng: numpy.random.Generator.

    Returns:
        (k, 2) int64 array of (row, col); the image centre k times if the mask is empty.
    """
    rows, cols = np.nonzero(np.asarray(mask) > 0)
    if rows.size == 0:
        height, width = np.asarray(mask).shape
        return np.tile([[height // 2, width // 2]], (k, 1)).astype(np.int64)
    index = rng.integers(0, rows.size, size=k)
    return np.stack([rows[index], cols[index]], axis=1).astype(np.int64)


def crop_patch(image, centre, size):
    """The `size` x `size` patch whose top-left is centre - size // 2, zero-padded outside the image.

    Args:
        image: (H, W) or (H, W, C) array.
        centre: (row, col).
        size: int.
    """
    image = np.asarray(image)
    row, col = int(centre[0]) - size // 2, int(centre[1]) - size // 2
    patch = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
    top, left = max(row, 0), max(col, 0)
    bottom, right = min(row + size, image.shape[0]), min(col + size, image.shape[1])
    if bottom > top and right > left:
        patch[top - row:bottom - row, left - col:right - col] = image[top:bottom, left:right]
    return patch


def aggregate_patch_scores(probabilities):
    """Per-image scores from (N, K, C) patch probabilities: (vote fractions, mean probabilities).

    Vote fractions are the share of the K patches whose argmax is each class (the
    paper's majority-vote confidence); mean probabilities average the softmax.
    Both sum to 1 over the classes.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    classes = probabilities.shape[-1]
    votes = np.eye(classes)[np.argmax(probabilities, axis=-1)].mean(axis=1)
    return votes, probabilities.mean(axis=1)


def segment_quality(probabilities, flipped, lung_classes, flip_tta):
    """NumPy + SciPy oracle of `film_pipeline.segment_quality` on (B, S, S, C) outputs (mirror pass not flipped back).

    Returns:
        (masks (B, S, S) bool, mean max-probability inside each mask (0 if empty), 1 - Jaccard of the argmax
        lung masks of the two passes before the clean-up (0 if both empty)).
    """
    back = flipped[:, :, ::-1]
    used = (probabilities + back) / 2 if flip_tta else probabilities

    def clean(outputs):
        return np.array([clean_lung_mask(np.isin(x.argmax(-1), lung_classes)).astype(bool) for x in outputs])

    masks = clean(used)
    film, mirror = (np.isin(p.argmax(-1), lung_classes) for p in (probabilities, back))   # before the clean-up
    confidence = np.array([x.max(-1)[m].mean() if m.any() else 0.0 for x, m in zip(used, masks, strict=True)])
    disagreement = np.array([(a ^ b).sum() / (a | b).sum() if (a | b).any() else 0.0
                             for a, b in zip(film, mirror, strict=True)])
    return masks, confidence, disagreement
