"""The cache contract: `WORKDIR/cache/cache.json`, read and written only here.

`segment` writes it last, when every shard of the plan is on disk; it says what made the cache (the key: the
segmenter's fingerprint, input and classes, the view size, QC bounds and `patches.input`) and which shard files
make it up. Training records the key in run.yaml, predict-base and serving compare against it, and `reproduce`
reads the shard list to tell a complete cache.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tfflannel.errors import InputError
from tfflannel.utils import write_text_atomic

CACHE_RECORD_FILE = "cache.json"


@dataclass
class CacheRecord:
    """What made a segmentation cache.

    Args:
        key: dict. The cache key (`CacheSettings.key(segmenter)`).
        shard_size: int. Images per shard.
        shards: list of str. The shard file names of the plan, in order.
    """

    key: dict
    shard_size: int = 0
    shards: list = field(default_factory=list)


def cache_record_path(workdir):
    """WORKDIR/cache/cache.json."""
    return Path(workdir) / "cache" / CACHE_RECORD_FILE


def read_cache_record(workdir):
    """The cache record of a work directory, or `None` when the cache is not complete (no cache.json).

    Args:
        workdir: str or Path. The work directory (its `cache/` folder).

    Returns:
        CacheRecord or None.

    Raises:
        InputError: cache.json is not JSON, or not a mapping with a `key`.
    """
    path = cache_record_path(workdir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable ({error}); rerun `segment --data {Path(workdir)}`") from None
    if not isinstance(data, dict) or not isinstance(data.get("key"), dict):
        raise InputError(f"{path}: expected a mapping with a `key`; rerun `segment --data {Path(workdir)}`")
    return CacheRecord(key=data["key"], shard_size=int(data.get("shard_size", 0)), shards=list(data.get("shards", [])))


def write_cache_record(workdir, record):
    """Write WORKDIR/cache/cache.json atomically (the last write of a complete cache).

    Args:
        workdir: str or Path.
        record: CacheRecord.
    """
    write_text_atomic(cache_record_path(workdir), json.dumps(asdict(record), indent=2) + "\n")


def remove_cache_record(workdir):
    """Delete WORKDIR/cache/cache.json: the cache is no longer complete (no reader may use it)."""
    cache_record_path(workdir).unlink(missing_ok=True)


def recorded_cache_key(workdir):
    """The key of a work directory's complete cache, or `None` (no cache.json)."""
    record = read_cache_record(workdir)
    return record.key if record is not None else None
