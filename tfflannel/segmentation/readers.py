"""Segmentation training data: generic image/mask pairs, JSRT + SCR, Montgomery County.

Every reader returns a list of `SegPair`; `load_pair` decodes one into a
(H, W) uint8 image (bone bright) and a (H, W) uint8 label map in the chosen
class set (`lung`: 0 background, 1 lung; `jsrt`: 0 background, 1 heart,
2 left lung, 3 right lung).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from tfflannel.data.io import IMAGE_SUFFIXES, ImageReadError, check_image_size, image_limits, read_image, to_uint8
from tfflannel.errors import InputError


@dataclass(frozen=True)
class SegPair:
    """One training image and its mask files; `masks` maps a structure name to a file."""

    image: str
    masks: dict = field(default_factory=dict)
    patient_id: str = ""
    kind: str = "binary"

    @property
    def name(self):
        """Str. The image file name without its suffix."""
        return Path(self.image).stem


def read_pairs(source):
    """Image/mask pairs from a folder (`images/` + `masks/`, same file names) or a CSV.

    A CSV has columns `image` and `mask` (paths relative to the CSV) and optionally
    `patient_id` or `group_id`; a folder may hold such a CSV as `pairs.csv` or
    `seg_pairs.csv` for patient ids. Mask > 0 is lung.
    """
    source = Path(source)
    if source.is_file():
        return _pairs_from_csv(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: no such folder or CSV of image/mask pairs")
    for name in ("pairs.csv", "seg_pairs.csv"):
        if (source / name).is_file():
            return _pairs_from_csv(source / name)
    images, masks = source / "images", source / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise FileNotFoundError(f"{source}: expected images/ and masks/ folders (or a CSV with image,mask columns)")
    pairs = []
    for path in sorted(images.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        mask = masks / path.name
        if not mask.is_file():
            raise FileNotFoundError(f"{mask}: mask missing for image {path}")
        pairs.append(SegPair(str(path), {"lung": str(mask)}, patient_id=path.stem))
    if not pairs:
        raise FileNotFoundError(f"{images}: no images found")
    return pairs


def _pairs_from_csv(path):
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"image", "mask"} <= set(reader.fieldnames or []):
            raise InputError(f"{path}: needs columns 'image' and 'mask'; found {reader.fieldnames}")
        rows = list(reader)
    base = path.parent
    pairs = []
    for number, row in enumerate(rows, start=2):
        image, mask = base / row["image"], base / row["mask"]
        for item in (image, mask):
            if not item.is_file():
                raise FileNotFoundError(f"{path} row {number}: {item} does not exist")
        patient = row.get("group_id") or row.get("patient_id") or image.stem
        pairs.append(SegPair(str(image), {"lung": str(mask)}, patient_id=patient))
    return pairs


def read_jsrt(jsrt_dir, scr_dir):
    """JSRT raw `.IMG` films with SCR masks (`{heart,left lung,right lung}/<id>.gif`, any fold)."""
    jsrt_dir, scr_dir = Path(jsrt_dir), Path(scr_dir)
    if not jsrt_dir.is_dir() or not scr_dir.is_dir():
        raise FileNotFoundError(f"JSRT folder {jsrt_dir} or SCR folder {scr_dir} not found")
    gifs = {}
    for gif in scr_dir.rglob("*.gif"):
        structure = gif.parent.name.lower()
        if structure in ("heart", "left lung", "right lung"):
            gifs.setdefault(gif.stem, {})[structure] = str(gif)
    pairs = []
    for path in sorted(jsrt_dir.iterdir()):
        if not path.is_file() or path.suffix.upper() != ".IMG":
            continue  # the original crashed on other entries (issue #10)
        masks = gifs.get(path.stem)
        if not masks or not {"left lung", "right lung"} <= set(masks):
            raise FileNotFoundError(f"{path}: no SCR left/right lung masks named {path.stem}.gif under {scr_dir}")
        pairs.append(SegPair(str(path), masks, patient_id=path.stem, kind="jsrt"))
    if not pairs:
        raise FileNotFoundError(f"{jsrt_dir}: no .IMG files")
    return pairs


def read_montgomery(root):
    """Montgomery County set: `CXR_png/*.png` with `ManualMask/{leftMask,rightMask}/*.png`."""
    root = Path(root)
    images = root / "CXR_png"
    if not images.is_dir():
        raise FileNotFoundError(f"{root}: expected CXR_png/ and ManualMask/")
    pairs = []
    for path in sorted(images.glob("*.png")):
        left = root / "ManualMask" / "leftMask" / path.name
        right = root / "ManualMask" / "rightMask" / path.name
        if not left.is_file() or not right.is_file():
            raise FileNotFoundError(f"{path}: missing {left} or {right}")
        pairs.append(SegPair(str(path), {"left lung": str(left), "right lung": str(right)}, patient_id=path.stem,
                             kind="montgomery"))
    if not pairs:
        raise FileNotFoundError(f"{images}: no PNG images")
    return pairs


def read_jsrt_image(path, size=2048):
    """A JSRT raw film (big-endian 12-bit, 2048x2048, inverted polarity) as bone-bright uint8."""
    raw = np.fromfile(path, dtype=">u2")
    if raw.size != size * size:
        raise ImageReadError(path, f"expected {size}x{size} big-endian 16-bit pixels, found {raw.size} values")
    return to_uint8(4095 - np.clip(raw.reshape(size, size), 0, 4095).astype(np.int32))


def _read_mask(path, shape):
    from PIL import Image

    try:
        with Image.open(path) as image:
            check_image_size(path, image.height, image.width, dict(image_limits(), min_side=1))
            mask = np.asarray(image.convert("L")) > 127
    except OSError as error:
        raise ImageReadError(path, f"unreadable mask ({error})") from None
    if mask.shape != shape:
        mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return mask


def load_pair(pair, classes="lung"):
    """Decode a pair into ((H, W) uint8 image, (H, W) uint8 label map)."""
    image = read_jsrt_image(pair.image) if pair.kind == "jsrt" else read_image(pair.image)[0]
    shape = image.shape
    labels = np.zeros(shape, np.uint8)
    if pair.kind == "binary":
        if classes != "lung":
            raise InputError(f"{pair.image}: a binary mask only supports classes='lung'. "
                             f"Received: classes={classes!r}.")
        labels[_read_mask(pair.masks["lung"], shape)] = 1
        return image, labels
    if classes == "lung":
        for structure in ("left lung", "right lung"):
            if structure in pair.masks:
                labels[_read_mask(pair.masks[structure], shape)] = 1
        return image, labels
    # Heart written last so that, as in the original, the lower class index wins at overlaps.
    for structure, index in (("right lung", 3), ("left lung", 2), ("heart", 1)):
        if structure in pair.masks:
            labels[_read_mask(pair.masks[structure], shape)] = index
    return image, labels


def split_pairs(pairs, validation_share=0.2, seed=0):
    """Patient-disjoint (train, validation) split of the pairs, seeded."""
    if validation_share <= 0:
        return list(pairs), []
    groups = [pair.patient_id or pair.name for pair in pairs]
    splitter = GroupShuffleSplit(n_splits=1, test_size=validation_share, random_state=seed)
    train, valid = next(splitter.split(np.zeros(len(pairs)), groups=groups))
    return [pairs[i] for i in sorted(train)], [pairs[i] for i in sorted(valid)]
