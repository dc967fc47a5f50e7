"""Paired image/label-map augmentation for segmentation training (NumPy + OpenCV).

One seeded random affine (rotation, scale, shift, optional horizontal flip) is
applied to the image (bilinear) and the label map (nearest), then a random
brightness/contrast change to the image alone.
"""

from __future__ import annotations

import cv2
import numpy as np


def augment_pair(image, labels, rng, max_rotation=10.0, scale_range=(0.9, 1.1), max_shift=0.06,
                 flip=True, intensity=0.1):
    """Augment one (S, S, 1) float image in [0, 1] and its (S, S) uint8 label map.

    Args:
        image: (S, S, 1) float32 array in [0, 1].
        labels: (S, S) uint8 array.
        rng: numpy.random.Generator. The only source of randomness.
        max_rotation: float. Degrees. Defaults to `10.0`.
        scale_range: (float, float). Defaults to `(0.9, 1.1)`.
        max_shift: float. Share of the side. Defaults to `0.06`.
        flip: bool. Random left-right flip (only for label sets without left/right classes). Defaults to `True`.
        intensity: float. Max brightness shift and contrast change. Defaults to `0.1`.

    Returns:
        (image, labels) of the same shapes and dtypes.
    """
    size = image.shape[0]
    angle = rng.uniform(-max_rotation, max_rotation)
    scale = rng.uniform(*scale_range)
    shift = rng.uniform(-max_shift, max_shift, size=2) * size
    matrix = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, scale)
    matrix[:, 2] += shift
    warped = cv2.warpAffine(image[..., 0], matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    warped_labels = cv2.warpAffine(labels, matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
    if flip and rng.random() < 0.5:
        warped, warped_labels = warped[:, ::-1], warped_labels[:, ::-1]
    contrast = rng.uniform(1.0 - intensity, 1.0 + intensity)
    brightness = rng.uniform(-intensity, intensity)
    warped = np.clip((warped - 0.5) * contrast + 0.5 + brightness, 0.0, 1.0)
    return np.ascontiguousarray(warped[..., None], dtype=np.float32), np.ascontiguousarray(warped_labels)
