"""One cached view as a TFRecord `tf.train.Example`: its features, how a view is packed and how records are read.

Each record holds the PNG-encoded masked view and mask (uint8), the image id, the lung bounding box, lung
fraction, the mask's confidence and flip disagreement and the mask-quality flag. `segment`
(`segmentation.cache`) writes them; the patch datasets and the QC grid read them with `FEATURE_SPEC`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tfflannel.utils import read_csv


def _bytes(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))



def _int(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))



def _float(value):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))



FEATURE_SPEC = {
    "image_id": tf.io.FixedLenFeature([], tf.string),
    "image_png": tf.io.FixedLenFeature([], tf.string),
    "mask_png": tf.io.FixedLenFeature([], tf.string),
    "lung_bbox": tf.io.FixedLenFeature([4], tf.int64),
    "lung_fraction": tf.io.FixedLenFeature([], tf.float32),
    "mask_ok": tf.io.FixedLenFeature([], tf.int64),
    # -1: a record written before these were recorded (the next `segment` rewrites its shard).
    "mask_confidence": tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
    "flip_disagreement": tf.io.FixedLenFeature([], tf.float32, default_value=-1.0),
}



def encode_record(image_id, view):
    """One serialized tf.train.Example for a cached view (PNG: lossless storage of the uint8 arrays)."""
    import cv2

    features = {
        "image_id": _bytes(image_id.encode()),
        "image_png": _bytes(cv2.imencode(".png", view["image"])[1].tobytes()),
        "mask_png": _bytes(cv2.imencode(".png", view["mask"] * 255)[1].tobytes()),
        "lung_bbox": _int(int(v) for v in view["lung_bbox"]),
        "lung_fraction": _float(float(view["lung_fraction"])),
        "mask_ok": _int([int(view["mask_ok"])]),
        "mask_confidence": _float(float(view["mask_confidence"])),
        "flip_disagreement": _float(float(view["flip_disagreement"])),
    }
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString(deterministic=True)



def read_cache_records(cache_dir, limit=None):
    """Decode the records of a cache (the first `limit`, in index order) into dicts of NumPy arrays."""
    cache = Path(cache_dir)
    names = dict.fromkeys(r["shard"] for r in read_csv(cache / "index.csv"))
    dataset = tf.data.TFRecordDataset([str(cache / name) for name in names])
    if limit is not None:
        dataset = dataset.take(limit)
    records = []
    for raw in dataset:
        example = tf.io.parse_single_example(raw, FEATURE_SPEC)
        records.append({
            "image_id": example["image_id"].numpy().decode(),
            "image": tf.io.decode_png(example["image_png"], channels=1).numpy()[..., 0],
            "mask": (tf.io.decode_png(example["mask_png"], channels=1).numpy()[..., 0] > 0).astype(np.uint8),
            "lung_bbox": example["lung_bbox"].numpy().tolist(),
            "lung_fraction": float(example["lung_fraction"]),
            "mask_ok": int(example["mask_ok"]),
            "mask_confidence": float(example["mask_confidence"]),
            "flip_disagreement": float(example["flip_disagreement"]),
            "raw": raw.numpy(),
        })
    return records

