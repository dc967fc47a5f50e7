"""`cache/qc.png`: the most doubtful lung masks of a segment cache first, each with its numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tfflannel.segmentation.view_records import FEATURE_SPEC
from tfflannel.utils import read_csv, write_image_grid


def _number(row, name, missing):
    return float(row[name]) if row.get(name) not in (None, "") else missing


def qc_order(index_rows):
    """`index.csv` rows, the most doubtful mask first: the order of `qc.png`.

    Films that failed QC (`mask_ok=0`) come first, then ascending mask confidence, then descending flip
    disagreement; ties keep index order. Rows without the numbers (a cache written before they were recorded)
    come last among their QC group.

    Args:
        index_rows: list of dict. `read_csv(cache / "index.csv")`.

    Returns:
        list of dict, the same rows reordered.
    """
    return sorted(index_rows, key=lambda r: (r["mask_ok"] == "1", _number(r, "mask_confidence", 2.0),
                                             -_number(r, "flip_disagreement", -1.0)))


def qc_tile(record, thumb=192):
    """One `qc.png` tile: a cached view with its lung outline and numbers.

    The view thumbnail, the mask's outline (green), a red frame where QC failed, and `c` (mask confidence),
    `d` (flip disagreement) and `f` (lung fraction) printed at the top.

    Args:
        record: dict with image, mask, mask_ok, lung_fraction, mask_confidence, flip_disagreement.
        thumb: int. Tile side. Defaults to `192`.

    Returns:
        (thumb, thumb, 3) uint8 BGR.
    """
    import cv2

    image = cv2.cvtColor(cv2.resize(record["image"], (thumb, thumb), interpolation=cv2.INTER_AREA),
                         cv2.COLOR_GRAY2BGR)
    mask = cv2.resize(record["mask"], (thumb, thumb), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, (0, 255, 0), 1)
    if not record["mask_ok"]:
        cv2.rectangle(image, (0, 0), (thumb - 1, thumb - 1), (0, 0, 255), 3)
    text = (f"c {record['mask_confidence']:.3f} d {record['flip_disagreement']:.3f} "
            f"f {record['lung_fraction']:.2f}")
    cv2.rectangle(image, (0, 0), (thumb - 1, 14), (0, 0, 0), -1)
    cv2.putText(image, text, (3, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 255, 255), 1, cv2.LINE_AA)
    return image


def write_qc_grid(cache_dir, limit=24, thumb=192):
    """cache/qc.png: the `limit` most doubtful masks first (`qc_order`), each a `qc_tile`, 6 per row.

    Returns:
        Path of the PNG, or `None` for an empty cache.
    """
    cache = Path(cache_dir)
    chosen = qc_order(read_csv(cache / "index.csv"))[:limit]
    wanted = {r["image_id"] for r in chosen}
    shards = dict.fromkeys(r["shard"] for r in chosen)
    found = {}
    for raw in tf.data.TFRecordDataset([str(cache / name) for name in shards]):
        example = tf.io.parse_single_example(raw, FEATURE_SPEC)
        image_id = example["image_id"].numpy().decode()
        if image_id in wanted:
            found[image_id] = {
                "image": tf.io.decode_png(example["image_png"], channels=1).numpy()[..., 0],
                "mask": (tf.io.decode_png(example["mask_png"], channels=1).numpy()[..., 0] > 0).astype(np.uint8),
                **{name: float(example[name]) for name in ("lung_fraction", "mask_confidence", "flip_disagreement")},
                "mask_ok": int(example["mask_ok"])}
    tiles = [qc_tile(found[r["image_id"]], thumb) for r in chosen]
    return write_image_grid(tiles, cache / "qc.png", columns=6)
