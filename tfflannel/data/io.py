"""Decode any chest X-ray file a user may bring into one 2-D uint8 grayscale array.

PNG and JPEG go through Pillow (it raises on truncated files, where OpenCV
silently returns a half-grey image); DICOM goes through pydicom with the
modality LUT (rescale slope/intercept) and VOI window applied and MONOCHROME1
inverted, so that bone is always bright.

Every format is checked against two limits before its pixels are decoded (see
`set_image_limits`): a pixel limit, so a decompression bomb (a small file that
expands to gigabytes) is one unreadable file like any other, and a minimum
side, so a thumbnail is rejected with a reason instead of classified.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tfflannel.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")

MAX_MEGAPIXELS = 100.0
"""Default pixel limit in megapixels (the largest real chest films are ~ 4300 x 4300 = 18 MP)."""

MIN_SIDE = 64
"""Default minimum height and width in pixels."""

_limits = {"max_megapixels": MAX_MEGAPIXELS, "min_side": MIN_SIDE}


def set_image_limits(max_megapixels=MAX_MEGAPIXELS, min_side=MIN_SIDE):
    """Set the limits every later `read_image` call applies (the CLI sets them from `data.*` of the config).

    Args:
        max_megapixels: float. Largest accepted height x width, in millions of pixels. Defaults to `100.0`.
        min_side: int. Smallest accepted height and width, in pixels. Defaults to `64`.

    Raises:
        ValueError: a limit that is not positive.
    """
    if not max_megapixels > 0 or not min_side >= 1:
        raise ValueError(f"image limits must be positive. Received: max_megapixels={max_megapixels}, "
                         f"min_side={min_side}.")
    _limits.update(max_megapixels=float(max_megapixels), min_side=int(min_side))


def image_limits():
    """Return the limits in force.

    Returns:
        dict. A copy with `max_megapixels` (float) and `min_side` (int).
    """
    return dict(_limits)


TOO_MANY_PIXELS = ("{width}x{height} pixels ({megapixels} megapixels) exceeds the limit of {max_megapixels:g} "
                   "megapixels (possible decompression bomb); raise data.max_megapixels if the image is genuine")
"""Why an image over `max_megapixels` is refused; `str.format` fields: width, height, megapixels and the limits."""

TOO_SMALL = ("{width}x{height} pixels is smaller than the minimum side of {min_side} px (data.min_side); "
             "too small to classify")
"""Why an image under `min_side` is refused; `str.format` fields: width, height and the limits."""


def size_violations(height, width, limits):
    """The size rule of every reader: too many pixels, or a side too short.

    Written with arithmetic and comparison operators only, so the same rule applies to Python numbers (the
    file readers) and to TensorFlow tensors (the exported graph's `serving_default`, which reads the size from
    the encoded header; pass float64 tensors there so that no product overflows).

    Args:
        height: int or tensor. Rows.
        width: int or tensor. Columns.
        limits: dict. `max_megapixels` and `min_side` (see `set_image_limits`).

    Returns:
        tuple: `(too_many_pixels, too_small)`, two booleans (or boolean tensors).
    """
    too_many_pixels = height * width > limits["max_megapixels"] * 1e6
    too_small = (height < limits["min_side"]) | (width < limits["min_side"])
    return too_many_pixels, too_small


def check_image_size(path, height, width, limits):
    """Check an image's size, read from its header, before any pixel is decoded (`size_violations`).

    Args:
        path: str. The file, for the message.
        height: int. Rows.
        width: int. Columns.
        limits: dict. `max_megapixels` and `min_side` (see `set_image_limits`).

    Raises:
        ImageReadError: more pixels than `max_megapixels` million, or a side shorter than `min_side`.
    """
    height, width = int(height), int(width)
    too_many_pixels, too_small = size_violations(height, width, limits)
    fields = dict(limits, height=height, width=width, megapixels=round(height * width / 1e6))
    if too_many_pixels:
        raise ImageReadError(path, TOO_MANY_PIXELS.format(**fields))
    if too_small:
        raise ImageReadError(path, TOO_SMALL.format(**fields))


class ImageReadError(InputError):
    """A file that cannot be decoded as an image; the message names the file and why.

    Args:
        path: str or `pathlib.Path`. The file; kept as `self.path` (str).
        reason: str. Why it was rejected; kept as `self.reason`. The message is `"{path}: {reason}"`.
    """

    def __init__(self, path, reason):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def to_uint8(array):
    """Min-max scale any numeric 2-D array to uint8 (a constant image becomes zeros).

    Args:
        array: array-like, any numeric dtype and shape.

    Returns:
        numpy.ndarray, uint8, same shape: returned unchanged if already uint8, else
        `round((x - min) * 255 / (max - min))`, so the minimum maps to 0 and the maximum to 255.
    """
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


def _read_pillow(path, limits):
    from PIL import Image, UnidentifiedImageError

    # tfflannel applies its own limit (`check_image_size`, every format) before decoding; Pillow's global one would
    # warn at 89 MP and raise a foreign error type at 179 MP whatever data.max_megapixels says.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as image:
            check_image_size(path, image.height, image.width, limits)
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
    except ImageReadError:
        raise                                    # too large or too small: its own reason, not "corrupt" (a ValueError)
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a PNG, JPEG or DICOM image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"corrupt or truncated image ({error})") from None
    return np.ascontiguousarray(array), meta


def _read_dicom(path, limits):
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as error:  # pragma: no cover - pydicom is a dependency
        raise ImportError("Reading DICOM needs pydicom: pip install pydicom") from error
    try:
        dataset = pydicom.dcmread(path)
        rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    except Exception as error:  # pydicom raises many unrelated types for bad files
        raise ImageReadError(path, f"unreadable DICOM ({type(error).__name__}: {error})") from None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    check_image_size(path, rows * max(frames, 1), columns, limits)
    try:
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


def read_image(path, limits=None):
    """Read a PNG, JPEG (8- or 16-bit, gray/RGB/RGBA) or DICOM file as gray uint8.

    The size is checked against the limits from the file's header, before the pixels are decoded.

    Args:
        path: str or Path. The image file.
        limits: dict or None. `max_megapixels` and `min_side`; None applies those of `set_image_limits`
            (100 megapixels and 64 px unless changed). Defaults to `None`.

    Returns:
        (image, meta): image is a `(H, W)` uint8 array; meta is a dict with `path`,
        `format`, `mode` (Pillow mode or DICOM photometric interpretation),
        `height` and `width`.

    Raises:
        ImageReadError: the file is missing, empty, truncated, not an image, larger than the pixel limit or
            smaller than the minimum side. The message names the file and the reason.
    """
    limits = dict(_limits, **(limits or {}))
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "file is empty")
    if _is_dicom(path):
        array, meta = _read_dicom(path, limits)
    else:
        array, meta = _read_pillow(path, limits)
    if array.ndim != 2 or array.size == 0:
        raise ImageReadError(path, f"decoded to shape {array.shape}, expected a 2-D image")
    meta.update(path=path, height=int(array.shape[0]), width=int(array.shape[1]))
    return array, meta


def write_png(path, image):
    """Write a uint8 (H, W) array as PNG atomically.

    Args:
        path: str or `pathlib.Path`. Output file; parent directories are created.
        image: array-like of shape `(H, W)` (or `(H, W, 3)`/`(H, W, 4)` for colour). Cast with
            `np.asarray(image, np.uint8)`: values outside [0, 255] are not clipped, so scale first (`to_uint8`).
    """
    from PIL import Image

    from tfflannel.utils import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG")
