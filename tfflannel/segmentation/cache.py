"""`segment`: manifest -> lung-masked 1024x1024 views in TFRecord shards (TensorFlow-specific).

Each record holds the PNG-encoded masked view and mask (uint8), the image id, the
lung bounding box, lung fraction, the mask's confidence and flip disagreement
(`film_pipeline.segment_quality`) and the mask-quality flag, all made by
`tfflannel.film_pipeline` (through `segmentation.view_maker`), the code the export runs too; the record
format is `segmentation.view_records`. The cache holds no
label, split or fold: they belong to the manifest, and readers take them from it.

The cache records what made it: `cache.json` holds the segmenter's weights hash
and every setting that changes a record (`CacheSettings.key`); shard names carry
a digest of that key and of their images' (image_id, sha256), and `index.csv`
lists each image's sha256 and shard. A rerun with nothing changed writes nothing;
a changed image, segmenter or setting rebuilds exactly the shards it touches;
a new shard size (`segmentation.shard_size`) re-packs: records of unchanged images
are copied from the old shards, byte for byte, without running the segmenter;
shards of an old layout are removed once the new one is complete; temp files of
a killed run are removed by the next run. Readers read exactly the shards
`index.csv` lists and refuse a cache that does not match the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import tensorflow as tf
from tqdm.auto import tqdm

from tfflannel.data.io import ImageReadError, read_image
from tfflannel.data.manifest import load_manifest
from tfflannel.errors import InputError
from tfflannel.film_pipeline import ViewSettings
from tfflannel.segmentation.cache_record import CacheRecord, read_cache_record, remove_cache_record, write_cache_record
from tfflannel.segmentation.view_maker import view_maker
from tfflannel.segmentation.view_records import FEATURE_SPEC, encode_record
from tfflannel.utils import atomic_path, read_csv, write_csv_atomic

log = logging.getLogger(__name__)
CACHE_FORMAT = 2
INDEX_COLUMNS = ("image_id", "sha256", "shard", "mask_ok", "lung_fraction", "mask_confidence", "flip_disagreement")
ERROR_COLUMNS = ("image_id", "path", "reason")


@dataclass
class CacheSettings:
    """How `segment` builds the cache.

    Args:
        view: ViewSettings. Size, QC bounds and learner input of the masked view. Defaults to `ViewSettings()`.
        shard_size: int. Images per TFRecord shard. Defaults to `64`.
        batch_size: int. Films per segmenter call. Defaults to `8`.
    """

    view: ViewSettings = field(default_factory=ViewSettings)
    shard_size: int = 64
    batch_size: int = 8

    @classmethod
    def from_config(cls, config):
        """From an `ExperimentConfig`."""
        return cls(ViewSettings.from_config(config), config.segmentation.shard_size,
                   config.segmentation.inference_batch)

    def key(self, segmenter):
        """Everything that changes a record (not the shard size or batch size): a dict."""
        return {"format": CACHE_FORMAT, "segmenter": segmenter.fingerprint, "segmenter_input": segmenter.input_size,
                "segmenter_classes": segmenter.classes, **self.view.key()}


def _digest(*parts):
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()


def plan_shards(rows, settings, key):
    """The shard layout for manifest `rows`: [(file name, rows)], rows sorted by image_id.

    A shard's name carries a digest of the cache key and its images' (image_id, sha256), so a shard whose
    inputs changed gets a new name and an unchanged one keeps its name (and is not rewritten).
    """
    rows = sorted(rows, key=lambda r: r["image_id"])
    count = max(1, -(-len(rows) // settings.shard_size))
    key_text = json.dumps(key, sort_keys=True)
    plan = []
    for number in range(count):
        chunk = rows[number * settings.shard_size:(number + 1) * settings.shard_size]
        digest = _digest(key_text, *(f"{r['image_id']}\t{r['sha256']}" for r in chunk))[:12]
        plan.append((f"shard-{number:05d}-of-{count:05d}-{digest}.tfrecord", chunk))
    return plan


def _parts(cache, name):
    stem = Path(name).stem
    return cache / "parts" / f"{stem}.csv", cache / "parts" / f"{stem}.errors.csv"


def _finished(cache, name):
    """Whether shard `name` is complete and of this version: its file and its index part with today's columns.

    A shard written before `mask_confidence` / `flip_disagreement` were recorded is rewritten (same views, the
    cache key is unchanged) so that the index always has them.
    """
    index_part = _parts(cache, name)[0]
    if not ((cache / name).exists() and index_part.exists()):
        return False
    with open(index_part, encoding="utf-8") as handle:
        return handle.readline().strip().split(",") == list(INDEX_COLUMNS)


def _write_shard(make_views, rows, path, settings, reusable):
    """Write one shard: records of `reusable` images are copied byte for byte, the others segmented.

    Args:
        make_views: callable. Returns the `ViewMaker`; called only when some film needs the segmenter.
        rows: list of dict. The shard's manifest rows, sorted by image_id.
        path: Path. The shard file.
        settings: CacheSettings.
        reusable: dict. {image_id: index row} of records already in the cache under the same key (`_reusable`).
    """
    copied = _copy_records(path.parent, [reusable[r["image_id"]] for r in rows
                                         if reusable.get(r["image_id"], {}).get("sha256") == r["sha256"]])
    films, kept, errors = [], [], []
    for row in rows:
        if row["image_id"] in copied:
            continue
        try:
            films.append(read_image(row["path"])[0])
            kept.append(row)
        except ImageReadError as error:
            log.warning("skipping %s: %s", row["image_id"], error)
            errors.append({"image_id": row["image_id"], "path": row["path"], "reason": error.reason})
    views = dict(zip((r["image_id"] for r in kept), make_views().views(films, settings.batch_size) if films else [],
                     strict=True))
    index_rows = []
    with atomic_path(path) as tmp:
        with tf.io.TFRecordWriter(tmp) as writer:
            for row in rows:
                if row["image_id"] in copied:
                    raw, index_row = copied[row["image_id"]]
                    writer.write(raw)
                    index_rows.append({**index_row, "shard": path.name})
                    continue
                view = views.get(row["image_id"])
                if view is None:
                    continue                                     # unreadable: listed in errors
                writer.write(encode_record(row["image_id"], view))
                index_rows.append({"image_id": row["image_id"], "sha256": row["sha256"], "shard": path.name,
                                   "mask_ok": int(view["mask_ok"]),
                                   "lung_fraction": f"{float(view['lung_fraction']):.4f}",
                                   "mask_confidence": f"{float(view['mask_confidence']):.4f}",
                                   "flip_disagreement": f"{float(view['flip_disagreement']):.4f}"})
    index_path, errors_path = _parts(path.parent, path.name)
    write_csv_atomic(errors_path, errors, ERROR_COLUMNS)
    write_csv_atomic(index_path, index_rows, INDEX_COLUMNS)   # last: its presence marks the shard finished


def _reusable(cache):
    """{image_id: index row} of the complete cache's records, whose shard files are still there.

    Only called when `cache.json` holds the current key: these records are exactly what segmenting the same
    film (same sha256) would write, so a new shard layout (`segmentation.shard_size`) copies them instead.
    """
    if not (cache / "index.csv").is_file():
        return {}
    rows = read_csv(cache / "index.csv")
    return {r["image_id"]: r for r in rows if all(r.get(c) not in (None, "") for c in INDEX_COLUMNS)
            and (cache / r["shard"]).is_file()}


def _copy_records(cache, index_rows):
    """{image_id: (serialized record, index row)} read from the shards `index_rows` name."""
    wanted = {r["image_id"]: r for r in index_rows}
    found = {}
    for name in dict.fromkeys(r["shard"] for r in index_rows):
        for raw in tf.data.TFRecordDataset(str(cache / name)):
            image_id = tf.io.parse_single_example(raw, {"image_id": FEATURE_SPEC["image_id"]})["image_id"]
            image_id = image_id.numpy().decode()
            if image_id in wanted:
                found[image_id] = (raw.numpy(), wanted[image_id])
    return found


def _remove_orphans(cache, others):
    """Delete temp files left by killed runs, except those of shards another `--shard` part may be writing."""
    for tmp in list(cache.glob(".*.tmp")) + list((cache / "parts").glob(".*.tmp")):
        if tmp.name[1:].split(".")[0] not in others:
            tmp.unlink(missing_ok=True)


def _record_of_key(workdir, key):
    """The cache's `CacheRecord` if it holds `key`; else None, with `cache.json` and `index.csv` removed.

    Records made another way (segmenter, size, QC, input) or of unknown provenance (an unreadable record):
    no reader may use them.
    """
    try:
        recorded = read_cache_record(workdir)
    except InputError:
        recorded = None                      # unreadable: of unknown provenance
    if recorded is None or recorded.key != key:
        remove_cache_record(workdir)
        (Path(workdir) / "cache" / "index.csv").unlink(missing_ok=True)
        recorded = None
    return recorded


def _finish_cache(workdir, plan, errors, state):
    """Write the complete cache's index, errors and QC grid, remove old-layout files, then record it.

    Returns:
        int. Old-layout shard files removed.
    """
    cache = Path(workdir) / "cache"
    removed = 0
    index = [row for name, _ in plan for row in read_csv(_parts(cache, name)[0])]
    write_csv_atomic(cache / "errors.csv", errors, ERROR_COLUMNS)
    write_csv_atomic(cache / "index.csv", index, INDEX_COLUMNS)
    current = {name for name, _ in plan}
    for old in cache.glob("shard-*.tfrecord"):
        if old.name not in current:
            old.unlink()
            removed += 1
    stems = {Path(name).stem for name in current}
    for old in (cache / "parts").glob("*.csv"):
        if old.name.split(".")[0] not in stems:
            old.unlink()
    from tfflannel.segmentation.qc_grid import write_qc_grid

    write_qc_grid(cache)
    write_cache_record(workdir, state)   # last: the cache is complete
    return removed


def build_cache(workdir, segmenter, settings=None, shard=(1, 1), progress=True):
    """Segment every manifest image into `WORKDIR/cache/`, rebuilding only what is stale; returns a summary.

    Args:
        workdir: str or Path holding manifest.csv.
        segmenter: a `Segmenter` (see `segmentation.inference`).
        settings: CacheSettings. Defaults to `CacheSettings()`.
        shard: (I, N). Process only shards whose number modulo N is I - 1. Defaults to `(1, 1)`.
        progress: bool. Show a progress bar. Defaults to `True`.

    Returns:
        dict: shards, written, skipped, errors, complete, removed (old-layout shards), cache.

    Raises:
        ValueError: `shard` is not 1 <= I <= N.
    """
    settings = settings or CacheSettings()
    workdir = Path(workdir)
    rows = load_manifest(workdir)
    part, parts = shard
    if not 1 <= part <= parts:
        raise InputError(f"--shard must be I/N with 1 <= I <= N. Received: {part}/{parts}.")
    cache = workdir / "cache"
    (cache / "parts").mkdir(parents=True, exist_ok=True)
    key = settings.key(segmenter)
    plan = plan_shards(rows, settings, key)
    recorded = _record_of_key(workdir, key)
    mine = {name for number, (name, _) in enumerate(plan) if number % parts == part - 1}
    _remove_orphans(cache, {Path(name).stem for name, _ in plan if name not in mine})
    todo = [(name, chunk) for name, chunk in plan if name in mine and not _finished(cache, name)]
    skipped = len(mine) - len(todo)
    reusable = _reusable(cache) if recorded is not None and todo else {}
    bar = tqdm(total=sum(len(chunk) for _, chunk in todo), desc="segmenting", unit="img", disable=not progress)
    for name, chunk in todo:
        _write_shard(lambda: view_maker(segmenter, settings.view), chunk, cache / name, settings, reusable)
        bar.update(len(chunk))
    bar.close()
    complete = all(_finished(cache, name) for name, _ in plan)
    removed = 0
    errors = [e for name, _ in plan if _parts(cache, name)[1].exists() for e in read_csv(_parts(cache, name)[1])]
    state = CacheRecord(key=key, shard_size=settings.shard_size, shards=[name for name, _ in plan])
    if complete and (todo or recorded != state or not (cache / "index.csv").is_file()):
        removed = _finish_cache(workdir, plan, errors, state)
    return {"shards": len(plan), "written": len(todo), "skipped": skipped, "errors": len(errors),
            "complete": complete, "removed": removed, "cache": str(cache)}


def cache_shards(workdir, rows=None):
    """The shard files `WORKDIR/cache/index.csv` lists, after checking the cache against the manifest.

    Args:
        workdir: str or Path.
        rows: manifest rows the reader needs. Defaults to the whole manifest.

    Returns:
        list of str, in index order.

    Raises:
        FileNotFoundError: no complete cache.
        ValueError: a manifest image is missing from the cache or its file changed since (stale cache).
    """
    cache = Path(workdir) / "cache"
    if not (cache / "index.csv").is_file():
        raise FileNotFoundError(f"{cache}: no complete cache (index.csv); run `segment --data {workdir}` first")
    index = {r["image_id"]: r for r in read_csv(cache / "index.csv")}
    failed = {r["image_id"] for r in read_csv(cache / "errors.csv")} if (cache / "errors.csv").exists() else set()
    rows = load_manifest(workdir) if rows is None else rows
    stale = [r["image_id"] for r in rows if r["image_id"] not in failed
             and (r["image_id"] not in index or index[r["image_id"]]["sha256"] != r["sha256"])]
    if stale:
        raise InputError(f"{cache}: {len(stale)} manifest image(s) are missing from the cache or changed since it was "
                         f"built (e.g. {stale[0]}); rerun `segment --data {workdir}`")
    return [str(cache / name) for name in dict.fromkeys(r["shard"] for r in index.values())]


