"""The predictions' provenance contract: `RUNDIR/predictions/provenance.json`, read and written only here.

`predict-base` writes it before and after each partition: what its outputs depend on (`PredictionIdentity`:
the model's hash, the run's settings, the manifest and cache index hashes, K, the patch seed) and which
partitions are done. predict-base reads it to skip up-to-date partitions, train-ensemble to record the K and
seed of its members' predictions, serving checks to compare K and seed, and `reproduce` to tell a finished job.

The file keeps the layout the first versions wrote (`{"identity": {...}, "done": [...]}`, indent 2), so
existing runs stay valid; keys an older version did not write read as `None`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from tfflannel.errors import InputError
from tfflannel.utils import write_text_atomic

PROVENANCE_FILE = "provenance.json"


@dataclass(frozen=True)
class PredictionIdentity:
    """What a run's predictions depend on; a change to any field makes them stale.

    Args:
        model_sha256: str. SHA-256 of the run's model.keras.
        kind: str. Run kind (`patch` or `global`).
        backbone: str. Backbone name.
        fold: int. Validation fold of the run.
        input_size: int. Patch or crop side.
        resize: int or None. Letterbox side of a global run.
        manifest_sha256: str. SHA-256 of the work directory's manifest.csv.
        cache_index_sha256: str or None. SHA-256 of cache/index.csv (patch runs).
        k: int. Patches per image (1 for global runs).
        seed: int. Seed of the patch centres.
        images_per_batch: int. Images per forward pass.
    """

    model_sha256: str | None = None
    kind: str | None = None
    backbone: str | None = None
    fold: int | None = None
    input_size: int | None = None
    resize: int | None = None
    manifest_sha256: str | None = None
    cache_index_sha256: str | None = None
    k: int | None = None
    seed: int | None = None
    images_per_batch: int | None = None

    def as_dict(self):
        """The identity as a flat dict, in file order (for `diff_keys` and the file)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Provenance:
    """What `predictions/provenance.json` holds.

    Args:
        identity: PredictionIdentity or None. What the predictions on disk were made with (`None`: not recorded).
        done: tuple of str. Partitions whose predictions are complete.
    """

    identity: PredictionIdentity | None = None
    done: tuple = ()


_INT_FIELDS = {"fold", "input_size", "resize", "k", "seed", "images_per_batch"}


def provenance_path(run_dir):
    """RUNDIR/predictions/provenance.json."""
    return Path(run_dir) / "predictions" / PROVENANCE_FILE


def _parse_identity(path, data):
    """A PredictionIdentity from the file's `identity` mapping (missing keys: `None`).

    Raises:
        InputError: not a mapping, an unknown key, or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise InputError(f"{path}: `identity` must be a mapping. Received: {data!r}.")
    known = {f.name for f in dataclasses.fields(PredictionIdentity)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{path}: unknown identity key(s) {unknown}; expected some of {sorted(known)} "
                         "(`predict-base --force` rewrites the file)")
    for name, value in data.items():
        wanted = int if name in _INT_FIELDS else str
        if value is not None and (not isinstance(value, wanted) or isinstance(value, bool)):
            raise InputError(f"{path}: identity.{name} must be {wanted.__name__} or null. Received: {value!r}.")
    return PredictionIdentity(**data)


def read_provenance(run_dir):
    """A run's predictions provenance, or `None` when it has none (no provenance.json).

    Args:
        run_dir: str or Path.

    Returns:
        Provenance or None.

    Raises:
        InputError: provenance.json is unreadable, not JSON, or not of the expected shape (names the file).
    """
    path = provenance_path(run_dir)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable predictions provenance ({error}); `predict-base --force` rewrites it"
                         ) from None
    if not isinstance(data, dict) or set(data) - {"identity", "done"}:
        raise InputError(f"{path}: expected a mapping with `identity` and `done` only. Received: "
                         f"{sorted(data) if isinstance(data, dict) else type(data).__name__}.")
    done = data.get("done", [])
    if not isinstance(done, list) or not all(isinstance(role, str) for role in done):
        raise InputError(f"{path}: `done` must be a list of partition names. Received: {done!r}.")
    identity = data.get("identity")
    recorded = _parse_identity(path, identity) if identity not in (None, {}) else None
    return Provenance(recorded, tuple(done))


def write_provenance(run_dir, provenance):
    """Write RUNDIR/predictions/provenance.json atomically (`done` sorted, identity keys in field order).

    Args:
        run_dir: str or Path.
        provenance: Provenance.
    """
    identity = provenance.identity.as_dict() if provenance.identity is not None else None
    text = json.dumps({"identity": identity, "done": sorted(provenance.done)}, indent=2) + "\n"
    write_text_atomic(provenance_path(run_dir), text)
