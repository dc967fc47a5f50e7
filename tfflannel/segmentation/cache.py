"""`segment`: manifest -> lung-masked 1024x1024 images in TFRecord shards (TensorFlow-specific).

Each record holds the PNG-encoded masked image and mask (uint8), the image id,
label, fold, split, lung bounding box, lung fraction and the mask-quality flag.
Shards are written atomically and skipped when present, so an interrupted run
resumes, and `--shard I/N` lets N machines share the work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfflannel.data.io import ImageReadError, read_image
from tfflannel.data.manifest import load_manifest
from tfflannel.segmentation.postprocess import lung_bbox, lung_fraction
from tfflannel.utils import atomic_path, read_csv, write_csv_atomic

log = logging.getLogger(__name__)
INDEX_COLUMNS = ("image_id", "shard", "mask_ok", "lung_fraction", "label", "split", "fold")
ERROR_COLUMNS = ("image_id", "path", "reason")


@dataclass
class CacheSettings:
    size: int = 1024
    keep_aspect: bool = True
    min_lung_fraction: float = 0.08
    max_lung_fraction: float = 0.65
    shard_size: int = 64
    batch_size: int = 8

    @classmethod
    def from_config(cls, seg):
        """From a `SegmentationConfig`."""
        return cls(size=seg.cache_size, keep_aspect=seg.keep_aspect, min_lung_fraction=seg.min_lung_fraction,
                   max_lung_fraction=seg.max_lung_fraction, shard_size=seg.shard_size, batch_size=seg.inference_batch)


def fit_to_square(image, size, keep_aspect=True, interpolation=cv2.INTER_AREA):
    """Resize (H, W) to (size, size): letterboxed (pad bottom/right, centred content kept) or stretched."""
    if not keep_aspect:
        return cv2.resize(image, (size, size), interpolation=interpolation)
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    out = np.zeros((size, size), dtype=image.dtype)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top:top + new_h, left:left + new_w] = resized
    return out


def mask_and_resize(image, mask, settings):
    """Apply the QC decision, bring image and mask to the cache size, return (masked, mask, fraction, ok)."""
    fraction = lung_fraction(mask)
    ok = settings.min_lung_fraction <= fraction <= settings.max_lung_fraction
    if not ok:
        mask = np.ones_like(mask)  # QC failed: use the full unmasked image rather than a wrong mask
    big_image = fit_to_square(image, settings.size, settings.keep_aspect, cv2.INTER_AREA)
    big_mask = fit_to_square(mask.astype(np.uint8), settings.size, settings.keep_aspect, cv2.INTER_NEAREST)
    masked = (big_image * (big_mask > 0)).astype(np.uint8)
    return masked, (big_mask > 0).astype(np.uint8), fraction, ok


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _float(value):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))


def encode_record(row, masked, mask, fraction, ok):
    """One tf.train.Example for a cached image."""
    png_image = cv2.imencode(".png", masked)[1].tobytes()
    png_mask = cv2.imencode(".png", mask * 255)[1].tobytes()
    features = {
        "image_id": _bytes(row["image_id"].encode()),
        "image_png": _bytes(png_image),
        "mask_png": _bytes(png_mask),
        "label": _bytes(row["label"].encode()),
        "split": _bytes(row["split"].encode()),
        "fold": _int([int(row["fold"]) if row["fold"] else 0]),
        "lung_bbox": _int(lung_bbox(mask)),
        "lung_fraction": _float(fraction),
        "mask_ok": _int([int(ok)]),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


FEATURE_SPEC = {
    "image_id": tf.io.FixedLenFeature([], tf.string),
    "image_png": tf.io.FixedLenFeature([], tf.string),
    "mask_png": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.string),
    "split": tf.io.FixedLenFeature([], tf.string),
    "fold": tf.io.FixedLenFeature([], tf.int64),
    "lung_bbox": tf.io.FixedLenFeature([4], tf.int64),
    "lung_fraction": tf.io.FixedLenFeature([], tf.float32),
    "mask_ok": tf.io.FixedLenFeature([], tf.int64),
}


def shard_name(index, count):
    return f"shard-{index:05d}-of-{count:05d}.tfrecord"


def _part_index(cache, index, count):
    """cache/parts/<shard stem>.csv: the index rows of one finished shard."""
    return cache / "parts" / (Path(shard_name(index, count)).stem + ".csv")


def _write_shard(segmenter, rows, path, index_path, settings, errors):
    images, kept = [], []
    for row in rows:
        try:
            images.append(read_image(row["path"])[0])
            kept.append(row)
        except ImageReadError as error:
            log.warning("skipping %s: %s", row["image_id"], error)
            errors.append({"image_id": row["image_id"], "path": row["path"], "reason": error.reason})
    masks = segmenter.predict(images, settings.batch_size) if images else []
    index_rows = []
    with atomic_path(path) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for row, image, mask in zip(kept, images, masks, strict=True):
                masked, big_mask, fraction, ok = mask_and_resize(image, mask, settings)
                writer.write(encode_record(row, masked, big_mask, fraction, ok))
                index_rows.append({"image_id": row["image_id"], "shard": path.name, "mask_ok": int(ok),
                                   "lung_fraction": f"{fraction:.4f}", "label": row["label"], "split": row["split"],
                                   "fold": row["fold"]})
    write_csv_atomic(index_path, index_rows, INDEX_COLUMNS)
    return index_rows


def build_cache(workdir, segmenter, settings=None, shard=(1, 1), progress=True):
    """Segment every manifest image into `WORKDIR/cache/`; returns a summary dict.

    Args:
        workdir: str or Path holding manifest.csv.
        segmenter: a `Segmenter` (see `segmentation.inference`).
        settings: CacheSettings. Defaults to `CacheSettings()`.
        shard: (I, N). Process only shards whose number modulo N is I - 1. Defaults to `(1, 1)`.
    """
    settings = settings or CacheSettings()
    workdir = Path(workdir)
    rows = load_manifest(workdir)
    part, parts = shard
    if not 1 <= part <= parts:
        raise ValueError(f"--shard must be I/N with 1 <= I <= N. Received: {part}/{parts}.")
    cache = workdir / "cache"
    (cache / "parts").mkdir(parents=True, exist_ok=True)
    count = max(1, -(-len(rows) // settings.shard_size))
    todo, skipped, errors = [], 0, []
    for number in range(count):
        if number % parts != part - 1:
            continue
        path = cache / shard_name(number, count)
        index_path = _part_index(cache, number, count)
        if path.exists() and index_path.exists():
            skipped += 1
            continue
        todo.append((number, path, index_path))
    bar = tqdm(total=sum(len(rows[n * settings.shard_size:(n + 1) * settings.shard_size]) for n, _, _ in todo),
               desc="segmenting", unit="img", disable=not progress)
    for number, path, index_path in todo:
        chunk = rows[number * settings.shard_size:(number + 1) * settings.shard_size]
        _write_shard(segmenter, chunk, path, index_path, settings, errors)
        bar.update(len(chunk))
    bar.close()
    previous_errors = read_csv(cache / "errors.csv") if (cache / "errors.csv").exists() else []
    done_ids = {e["image_id"] for e in errors}
    errors += [e for e in previous_errors if e["image_id"] not in done_ids]
    write_csv_atomic(cache / "errors.csv", errors, ERROR_COLUMNS)
    complete = all(_part_index(cache, n, count).exists() for n in range(count))
    if complete:
        index = [row for n in range(count) for row in read_csv(_part_index(cache, n, count))]
        write_csv_atomic(cache / "index.csv", index, INDEX_COLUMNS)
        write_qc_grid(cache)
    return {"shards": count, "written": len(todo), "skipped": skipped, "errors": len(errors), "complete": complete,
            "cache": str(cache)}


def read_cache_records(cache_dir, limit=None):
    """Decode the records of a cache (the first `limit`, in shard order) into dicts of NumPy arrays."""
    files = sorted(str(p) for p in Path(cache_dir).glob("shard-*.tfrecord"))
    dataset = tf.data.TFRecordDataset(files)
    if limit is not None:
        dataset = dataset.take(limit)
    records = []
    for raw in dataset:
        example = tf.io.parse_single_example(raw, FEATURE_SPEC)
        records.append({
            "image_id": example["image_id"].numpy().decode(),
            "image": tf.io.decode_png(example["image_png"], channels=1).numpy()[..., 0],
            "mask": (tf.io.decode_png(example["mask_png"], channels=1).numpy()[..., 0] > 0).astype(np.uint8),
            "label": example["label"].numpy().decode(),
            "split": example["split"].numpy().decode(),
            "fold": int(example["fold"]),
            "lung_bbox": example["lung_bbox"].numpy().tolist(),
            "lung_fraction": float(example["lung_fraction"]),
            "mask_ok": int(example["mask_ok"]),
        })
    return records


def write_qc_grid(cache_dir, limit=24, thumb=192):
    """cache/qc.png: the first `limit` images with the lung outline (green), a red frame where QC failed."""
    tiles = []
    for record in read_cache_records(cache_dir, limit):
        image = cv2.cvtColor(cv2.resize(record["image"], (thumb, thumb), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
        mask = cv2.resize(record["mask"], (thumb, thumb), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, (0, 255, 0), 1)
        if not record["mask_ok"]:
            cv2.rectangle(image, (0, 0), (thumb - 1, thumb - 1), (0, 0, 255), 3)
        tiles.append(image)
    if not tiles:
        return None
    columns = min(6, len(tiles))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    grid = np.vstack([np.hstack(tiles[i:i + columns]) for i in range(0, len(tiles), columns)])
    path = Path(cache_dir) / "qc.png"
    with atomic_path(path) as tmp:
        cv2.imwrite(tmp + ".png", grid)
        Path(tmp + ".png").replace(tmp)
    return path
