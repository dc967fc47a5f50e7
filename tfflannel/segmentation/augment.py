"""Paired image/label-map augmentation for segmentation training (NumPy + OpenCV).

`standard`: one seeded random affine (rotation, scale, shift, optional horizontal
flip) applied to the image (bilinear) and the label map (nearest), then a random
brightness/contrast change to the image alone. `strong` adds, from the same
generator, an elastic deformation of both, a random gamma and, on half the
images, CLAHE-like local contrast equalisation of the image.
"""

from __future__ import annotations

import cv2
import numpy as np

AUGMENT_STRENGTHS = ("standard", "strong")


def elastic_fields(rng, size, alpha=0.06, sigma=0.08):
    """A smooth random displacement field: (map_x, map_y) float32 sample positions for `cv2.remap`.

    Args:
        rng: numpy.random.Generator.
        size: int. Side S of the square image.
        alpha: float. Largest typical displacement, as a share of S. Defaults to `0.06`.
        sigma: float. Gaussian smoothing of the random field, as a share of S. Defaults to `0.08`.

    Returns:
        (map_x, map_y), each (S, S) float32.
    """
    coarse = rng.uniform(-1.0, 1.0, size=(2, size, size)).astype(np.float32)
    smooth = [cv2.GaussianBlur(field, (0, 0), sigma * size) for field in coarse]
    smooth = [field / max(float(np.abs(field).max()), 1e-6) * alpha * size for field in smooth]
    grid_y, grid_x = np.mgrid[0:size, 0:size].astype(np.float32)
    return grid_x + smooth[0], grid_y + smooth[1]


def local_contrast(image, rng, clip_range=(1.5, 3.0), tiles=8):
    """CLAHE on a [0, 1] float image with a random clip limit; returns float32 in [0, 1]."""
    clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(*clip_range)), tileGridSize=(tiles, tiles))
    return clahe.apply(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)).astype(np.float32) / 255.0


def augment_pair(image, labels, rng, max_rotation=10.0, scale_range=(0.9, 1.1), max_shift=0.06,
                 flip=True, intensity=0.1, strength="standard"):
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
        strength: str. `standard` or `strong` (adds elastic deformation, gamma and CLAHE). Defaults to
            `"standard"`.

    Returns:
        (image, labels) of the same shapes and dtypes.

    Raises:
        ValueError: `strength` is not one of `AUGMENT_STRENGTHS`.
    """
    if strength not in AUGMENT_STRENGTHS:
        raise ValueError(f"strength must be one of {AUGMENT_STRENGTHS}. Received: strength={strength!r}.")
    size = image.shape[0]
    angle = rng.uniform(-max_rotation, max_rotation)
    scale = rng.uniform(*scale_range)
    shift = rng.uniform(-max_shift, max_shift, size=2) * size
    matrix = cv2.getRotationMatrix2D((size / 2.0, size / 2.0), angle, scale)
    matrix[:, 2] += shift
    warped = cv2.warpAffine(image[..., 0], matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
    warped_labels = cv2.warpAffine(labels, matrix, (size, size), flags=cv2.INTER_NEAREST, borderValue=0)
    if strength == "strong":
        map_x, map_y = elastic_fields(rng, size)
        warped = cv2.remap(warped, map_x, map_y, cv2.INTER_LINEAR, borderValue=0.0)
        warped_labels = cv2.remap(warped_labels, map_x, map_y, cv2.INTER_NEAREST, borderValue=0)
    if flip and rng.random() < 0.5:
        warped, warped_labels = warped[:, ::-1], warped_labels[:, ::-1]
    contrast = rng.uniform(1.0 - intensity, 1.0 + intensity)
    brightness = rng.uniform(-intensity, intensity)
    warped = np.clip((warped - 0.5) * contrast + 0.5 + brightness, 0.0, 1.0)
    if strength == "strong":
        warped = np.power(warped, np.exp(rng.uniform(-0.3, 0.3)))
        if rng.random() < 0.5:
            warped = local_contrast(warped, rng)
    return np.ascontiguousarray(warped[..., None], dtype=np.float32), np.ascontiguousarray(warped_labels)
