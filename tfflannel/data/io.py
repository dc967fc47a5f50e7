"""Decode any chest X-ray file a user may bring into one 2-D uint8 grayscale array.

PNG and JPEG go through Pillow (it raises on truncated files, where OpenCV
silently returns a half-grey image); DICOM goes through pydicom with the
modality LUT (rescale slope/intercept) and VOI window applied and MONOCHROME1
inverted, so that bone is always bright.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


class ImageReadError(ValueError):
    """A file that cannot be decoded as an image; the message names the file and why."""

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def sha256_of_file(path, chunk_size=1 << 20):
    """Hex sha256 of a file's bytes (identical files share it, whatever their name)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_uint8(array):
    """Min-max scale any numeric 2-D array to uint8 (a constant image becomes zeros)."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.round((array - low) * (255.0 / (high - low))).astype(np.uint8)


def _is_dicom(path):
    if Path(path).suffix.lower() in (".dcm", ".dicom"):
        return True
    with open(path, "rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_pillow(path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                # Composite on black: transparent borders of figure crops become background.
                background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                gray = Image.alpha_composite(background, rgba).convert("L")
                array = np.asarray(gray)
            elif mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                array = to_uint8(np.asarray(image))
            elif mode == "L":
                array = np.asarray(image)
            else:
                array = np.asarray(image.convert("L"))
            meta = {"format": image.format, "mode": mode}
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a PNG, JPEG or DICOM image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from None
    return np.ascontiguousarray(array), meta


def _read_dicom(path):
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as error:  # pragma: no cover - pydicom is a dependency
        raise ImportError("Reading DICOM needs pydicom: pip install pydicom") from error
    try:
        dataset = pydicom.dcmread(path)
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many unrelated types for bad files
        raise ImageReadError(path, f"unreadable DICOM ({type(error).__name__}: {error})") from None
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        pixels = pixels[..., :3].mean(axis=-1)
    elif pixels.ndim != 2:
        raise ImageReadError(path, f"DICOM pixel data of shape {pixels.shape} is not a single 2-D image")
    values = apply_modality_lut(pixels, dataset)
    if "WindowCenter" in dataset or "VOILUTSequence" in dataset:
        values = apply_voi_lut(values, dataset)
    array = to_uint8(values)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "MONOCHROME1":
        array = 255 - array
    meta = {"format": "DICOM", "mode": photometric}
    return array, meta


def read_image(path):
    """Read a PNG, JPEG (8- or 16-bit, gray/RGB/RGBA) or DICOM file as gray uint8.

    Args:
        path: str or Path. The image file.

    Returns:
        (image, meta): image is a `(H, W)` uint8 array; meta is a dict with `path`,
        `format`, `mode` (Pillow mode or DICOM photometric interpretation),
        `height` and `width`.

    Raises:
        ImageReadError: the file is missing, empty, truncated or not an image.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "file is empty")
    if _is_dicom(path):
        array, meta = _read_dicom(path)
    else:
        array, meta = _read_pillow(path)
    if array.ndim != 2 or array.size == 0:
        raise ImageReadError(path, f"decoded to shape {array.shape}, expected a 2-D image")
    meta.update(path=path, height=int(array.shape[0]), width=int(array.shape[1]))
    return array, meta


def write_png(path, image):
    """Write a uint8 (H, W) array as PNG atomically."""
    from PIL import Image

    from tfflannel.utils import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
