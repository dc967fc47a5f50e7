"""Build `manifest.csv`, `rejected.csv` and `statistics.md` from the dataset readers.

The manifest is the contract every later stage reads: one row per kept image
with a stable `image_id`, its patient, label, file hash and partition.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from tfflannel import CLASS_NAMES
from tfflannel.data.io import ImageReadError, read_image, sha256_of_file
from tfflannel.data.sources import DatasetError, read_ccx, read_folder, read_kcx
from tfflannel.data.split import assign_splits
from tfflannel.utils import read_csv, write_csv_atomic, write_text_atomic

MANIFEST_COLUMNS = ("image_id", "path", "source", "patient_id", "view", "label", "sha256", "split", "fold")
REJECTED_COLUMNS = ("path", "source", "reason")


def _check_image(record):
    """Hash the file and make sure it decodes; return (record, error or None)."""
    try:
        read_image(record["path"])
        return dict(record, sha256=sha256_of_file(record["path"])), None
    except ImageReadError as error:
        return record, error.reason


def _drop_duplicates(records, rejected):
    """Keep one copy of identical files; drop every copy whose labels disagree."""
    by_hash = collections.defaultdict(list)
    for record in records:
        by_hash[record["sha256"]].append(record)
    kept = []
    for copies in by_hash.values():
        copies.sort(key=lambda r: r["image_id"])
        labels = sorted({r["label"] for r in copies})
        if len(labels) > 1:
            names = ", ".join(r["image_id"] for r in copies)
            for record in copies:
                rejected.append({"path": record["path"], "source": record["source"],
                                 "reason": f"identical image with conflicting labels {labels}: {names}"})
            continue
        kept.append(copies[0])
        for record in copies[1:]:
            rejected.append({"path": record["path"], "source": record["source"],
                             "reason": f"duplicate (same sha256) of {copies[0]['image_id']}"})
    return kept


def collect_records(ccx=None, kcx=None, folders=(), fungal_as_bacterial=False, workers=None, progress=True):
    """Read the requested sources, verify every image decodes, de-duplicate.

    Returns:
        (records, rejected): records sorted by image_id, each with `sha256`.
    """
    records, rejected = [], []
    if ccx:
        found, left = read_ccx(ccx, fungal_as_bacterial=fungal_as_bacterial)
        records += found
        rejected += left
    if kcx:
        found, left = read_kcx(kcx)
        records += found
        rejected += left
    for folder in folders or ():
        found, left = read_folder(folder)
        records += found
        rejected += left
    ids = collections.Counter(r["image_id"] for r in records)
    clashes = [name for name, count in ids.items() if count > 1]
    if clashes:
        raise DatasetError(f"image_id is not unique for {clashes[:5]}: two inputs share a source and file name")
    checked = []
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(_check_image, records)
        for record, error in tqdm(results, total=len(records), desc="reading images", unit="img", disable=not progress):
            if error:
                rejected.append({"path": record["path"], "source": record["source"], "reason": f"unreadable image: {error}"})
            else:
                checked.append(record)
    kept = _drop_duplicates(checked, rejected)
    kept.sort(key=lambda r: r["image_id"])
    rejected.sort(key=lambda r: (r["path"], r["reason"]))
    return kept, rejected


def _markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _partition(row):
    return "test" if row["split"] == "test" else f"fold {row['fold']}"


def format_statistics(rows, rejected, seed, folds, test_size):
    """A Table-2-like summary: counts per source, view and partition, and patients."""
    def count_table(key, title):
        values = sorted({key(r) for r in rows}, key=str)
        table = [[value] + [sum(1 for r in rows if key(r) == value and r["label"] == c) for c in CLASS_NAMES]
                 + [sum(1 for r in rows if key(r) == value)] for value in values]
        table.append(["total"] + [sum(1 for r in rows if r["label"] == c) for c in CLASS_NAMES] + [len(rows)])
        return f"## {title}\n\n" + _markdown_table([title.split()[-1]] + list(CLASS_NAMES) + ["total"], table)

    partitions = ["test"] + [f"fold {k}" for k in range(1, folds + 1)]
    patients = [[p, len({r["patient_id"] for r in rows if _partition(r) == p}),
                 sum(1 for r in rows if _partition(r) == p)] for p in partitions]
    own_patient = sum(1 for r in rows if r["patient_id"].startswith("image:"))
    reasons = collections.Counter(r["reason"].split(" [")[0].split(":")[0] for r in rejected)
    parts = [
        "# Dataset statistics",
        f"{len(rows)} images from {len({r['patient_id'] for r in rows})} patients kept; {len(rejected)} inputs rejected "
        f"(see rejected.csv). Split: test share {test_size}, {folds} folds, seed {seed}, grouped by patient and "
        "stratified by label.",
        count_table(lambda r: r["source"], "Images per source"),
        count_table(lambda r: r["view"], "Images per view"),
        count_table(_partition, "Images per partition"),
        "## Patients per partition\n\n" + _markdown_table(["partition", "patients", "images"], patients),
    ]
    if own_patient:
        parts.append(f"Warning: {own_patient} images had no patient id and count as their own patient; "
                     "patient leakage cannot be ruled out for them.")
    if reasons:
        parts.append("## Rejections\n\n" + _markdown_table(["reason", "inputs"], sorted(reasons.items())))
    sources = {r["source"] for r in rows}
    if len(sources) > 1:
        parts.append("Caveat: sources differ in population (the COVID collection is mostly adult films, the "
                     "Kaggle pneumonia set paediatric); a classifier can separate classes by source cues.")
    return "\n\n".join(parts) + "\n"


def prepare_manifest(out, ccx=None, kcx=None, folders=(), seed=0, folds=5, test_size=0.2,
                     fungal_as_bacterial=False, progress=True):
    """Build and write `out/manifest.csv`, `out/rejected.csv` and `out/statistics.md`.

    Args:
        out: str or Path. The work directory (created if missing).
        ccx: str or Path. COVID chest X-ray collection checkout, or None.
        kcx: str or Path. Kaggle pneumonia folder, or None.
        folders: sequence of paths in the `DIR/<label>/*` layout.
        seed: int. Seeds the split. Defaults to `0`.
        folds: int. Number of folds. Defaults to `5`.
        test_size: float. Test share. Defaults to `0.2`.
        fungal_as_bacterial: bool. Label fungal findings bacterial, as the original. Defaults to `False`.

    Returns:
        The manifest rows (list of dicts).

    Raises:
        DatasetError: no source given, unreadable metadata, or no image left.
    """
    if not (ccx or kcx or folders):
        raise DatasetError("no data source given: pass at least one of --ccx, --kcx, --folder (or --sample)")
    records, rejected = collect_records(ccx, kcx, folders, fungal_as_bacterial, progress=progress)
    if not records:
        raise DatasetError(f"no images left after filtering ({len(rejected)} inputs rejected; reasons in the error list)"
                           + "".join(f"\n  {r['path']}: {r['reason']}" for r in rejected[:10]))
    split, fold = assign_splits([r["label"] for r in records], [r["patient_id"] for r in records],
                                test_size=test_size, folds=folds, seed=seed)
    for record, part, number in zip(records, split, fold, strict=True):
        record["split"] = part
        record["fold"] = str(number) if part == "train" else ""
    out = Path(out)
    write_csv_atomic(out / "rejected.csv", rejected, REJECTED_COLUMNS)
    write_text_atomic(out / "statistics.md", format_statistics(records, rejected, seed, folds, test_size))
    write_csv_atomic(out / "manifest.csv", records, MANIFEST_COLUMNS)
    return records


def load_manifest(path):
    """Read a manifest.csv (a file or a work directory) and check its columns and labels."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found; run `prepare-data` first")
    rows = read_csv(path)
    if rows:
        missing = [c for c in MANIFEST_COLUMNS if c not in rows[0]]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing}")
    for number, row in enumerate(rows, start=2):
        if row["label"] not in CLASS_NAMES:
            raise DatasetError(f"{path} row {number}: label '{row['label']}' is not one of {list(CLASS_NAMES)}")
    return rows
