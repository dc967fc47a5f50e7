"""Build `manifest.csv`, `rejected.csv` and `statistics.md` from the dataset readers.

The manifest is the contract every later stage reads: one row per kept image
with a stable `image_id`, its patient, the patient group it is split with
(`group_id`: patient ids linked by identical or near-identical films,
`tfflannel.data.linkage`), label, file hash and partition.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from tfflannel import CLASS_NAMES
from tfflannel.data.io import ImageReadError, read_image
from tfflannel.data.linkage import Link, fingerprint_image, group_patients, link_near_identical
from tfflannel.data.sources import DatasetError, read_ccx, read_folder, read_kcx
from tfflannel.data.split import assign_external_splits, assign_splits
from tfflannel.data.statistics import format_statistics
from tfflannel.errors import InputError
from tfflannel.utils import read_csv, sha256_of_file, write_csv_atomic, write_text_atomic

REQUIRED_COLUMNS = ("image_id", "path", "source", "patient_id", "view", "label", "sha256", "split", "fold",
                    "group_id")
"""Columns every manifest has; `load_manifest` refuses one without them."""
DEMOGRAPHIC_COLUMNS = ("age", "sex", "age_group")
"""Written where a source records them (empty otherwise); a manifest made before they existed reads them as empty."""
MANIFEST_COLUMNS = REQUIRED_COLUMNS + DEMOGRAPHIC_COLUMNS
REJECTED_COLUMNS = ("path", "source", "reason")


def _check_image(record):
    """Hash the file, decode it and fingerprint the pixels in the same pass; return (record, error or None)."""
    try:
        image, _ = read_image(record["path"])
        dhash, thumbnail = fingerprint_image(image)
        return dict(record, sha256=sha256_of_file(record["path"]), _dhash=dhash, _thumbnail=thumbnail), None
    except ImageReadError as error:
        return record, error.reason


def _merge_listings(records, rejected):
    """One record per file that metadata lists several times (one film under two patient ids, say).

    Returns:
        (records, links): the first listing of each file, and a `Link` of kind `"same file"` to every
        other listing under another patient id. A file listed under two labels is excluded entirely.

    Raises:
        DatasetError: one image_id names two different files.
    """
    by_id = collections.defaultdict(list)
    for record in records:
        by_id[record["image_id"]].append(record)
    clashes = [image_id for image_id, rows in by_id.items() if len({r["path"] for r in rows}) > 1]
    if clashes:
        raise DatasetError(f"image_id is not unique for {clashes[:5]}: two inputs share a source and file name")
    kept, links = [], []
    for rows in by_id.values():
        first = rows[0]
        links += [Link("same file", first["image_id"], row["image_id"], first["patient_id"], row["patient_id"],
                       first["label"], row["label"], 0, 1.0)
                  for row in rows[1:] if row["patient_id"] != first["patient_id"]]
        labels = sorted({r["label"] for r in rows})
        patients = sorted({r["patient_id"] for r in rows})
        if len(labels) > 1:
            rejected += [{"path": row["path"], "source": row["source"],
                          "reason": f"file listed under conflicting labels: {labels}, patients {patients}"}
                         for row in rows]
            continue
        kept.append(first)
        rejected += [{"path": row["path"], "source": row["source"],
                      "reason": f"listed again: {first['image_id']} also under patient {row['patient_id']} "
                                f"(kept under {first['patient_id']}; the patients are linked)"} for row in rows[1:]]
    return kept, links


def _identical_link(first, second):
    return Link("identical", first["image_id"], second["image_id"], first["patient_id"], second["patient_id"],
                first["label"], second["label"], 0, 1.0)


def _drop_duplicates(records, rejected):
    """Keep one copy of identical files; drop every copy whose labels disagree.

    Returns:
        (kept, links): the kept records and one `Link` per dropped copy (its patient joins the kept copy's).
    """
    by_hash = collections.defaultdict(list)
    for record in records:
        by_hash[record["sha256"]].append(record)
    kept, links = [], []
    for copies in by_hash.values():
        copies.sort(key=lambda r: r["image_id"])
        links += [_identical_link(copies[0], copy) for copy in copies[1:]]
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
    return kept, links


def collect_records(ccx=None, kcx=None, folders=(), fungal_as_bacterial=False, workers=None, progress=True,
                    max_distance=8, min_correlation=0.97):
    """Read the requested sources, verify every image decodes, de-duplicate, link patients.

    Args:
        ccx: str or Path. COVID chest X-ray collection checkout, or None.
        kcx: str or Path. Kaggle pneumonia folder, or None.
        folders: sequence of paths in the `DIR/<label>/*` layout.
        fungal_as_bacterial: bool. Label fungal findings bacterial. Defaults to `False`.
        workers: int. Decoding threads. Defaults to `min(8, cpu count)`.
        progress: bool. Show a progress bar. Defaults to `True`.
        max_distance: int. dHash Hamming distance of a near-identical candidate pair. Defaults to `8`.
        min_correlation: float. 64x64 thumbnail correlation confirming a candidate. Defaults to `0.97`.

    Returns:
        (records, rejected, links): records sorted by image_id, each with `sha256` and `group_id`;
        links: every `Link` found (files listed twice, identical copies, confirmed near-identical films), sorted.
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
    records, listed = _merge_listings(records, rejected)
    checked = []
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = pool.map(_check_image, records)
        for record, error in tqdm(results, total=len(records), desc="reading images", unit="img", disable=not progress):
            if error:
                reason = f"unreadable image: {error}"
                rejected.append({"path": record["path"], "source": record["source"], "reason": reason})
            else:
                checked.append(record)
    kept, links = _drop_duplicates(checked, rejected)
    links += listed
    kept.sort(key=lambda r: r["image_id"])
    links += link_near_identical(kept, [r["_dhash"] for r in kept], [r["_thumbnail"] for r in kept],
                                 max_distance, min_correlation)
    links.sort(key=lambda link: (link.kind, link.image_a, link.image_b))
    groups = group_patients([r["patient_id"] for r in checked], links)
    for record in kept:
        record["group_id"] = groups[record["patient_id"]]
        del record["_dhash"], record["_thumbnail"]
    rejected.sort(key=lambda r: (r["path"], r["reason"]))
    return kept, rejected, links


def prepare_manifest(out, ccx=None, kcx=None, folders=(), seed=0, folds=5, test_size=0.2,
                     fungal_as_bacterial=False, progress=True, max_distance=8, min_correlation=0.97, test_sources=()):
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
        progress: bool. Show a progress bar. Defaults to `True`.
        max_distance: int. dHash Hamming distance of a near-identical candidate pair, in [0, 64]. Defaults to `8`.
        min_correlation: float. Thumbnail correlation confirming a near-identical pair, in (0, 1]. Defaults to `0.97`.
        test_sources: sequence of str. External validation: every film of these sources (and of any patient group
            holding one) is the test set, the rest is folded (`split.assign_external_splits`); `test_size` is then
            unused. Defaults to `()` (the usual grouped, stratified test split).

    Returns:
        The manifest rows (list of dicts).

    Raises:
        DatasetError: no source given, unreadable metadata, or no image left.
        InputError: a linking threshold out of range.
    """
    if not (ccx or kcx or folders):
        raise DatasetError("no data source given: pass at least one of --ccx, --kcx, --folder (or --sample)")
    if not 0 <= max_distance <= 64:
        raise InputError(f"data.link_max_distance must be in [0, 64] bits. Received: {max_distance}.")
    if not 0.0 < min_correlation <= 1.0:
        raise InputError(f"data.link_min_correlation must be in (0, 1]. Received: {min_correlation}.")
    records, rejected, links = collect_records(ccx, kcx, folders, fungal_as_bacterial, progress=progress,
                                               max_distance=max_distance, min_correlation=min_correlation)
    if not records:
        raise DatasetError(f"no images left after filtering ({len(rejected)} inputs rejected; "
                           "reasons in the error list)"
                           + "".join(f"\n  {r['path']}: {r['reason']}" for r in rejected[:10]))
    labels, groups = [r["label"] for r in records], [r["group_id"] for r in records]
    if test_sources:
        unknown = sorted(set(test_sources) - {r["source"] for r in records})
        if unknown:
            raise InputError(f"--test-source / data.test_sources: no image of source(s) {unknown}; sources present: "
                             f"{sorted({r['source'] for r in records})}")
        split, fold = assign_external_splits(labels, groups, [r["source"] in test_sources for r in records],
                                             folds=folds, seed=seed)
    else:
        split, fold = assign_splits(labels, groups, test_size=test_size, folds=folds, seed=seed)
    for record, part, number in zip(records, split, fold, strict=True):
        record["split"] = part
        record["fold"] = str(number) if part == "train" else ""
    out = Path(out)
    write_csv_atomic(out / "rejected.csv", rejected, REJECTED_COLUMNS)
    write_text_atomic(out / "statistics.md", format_statistics(records, rejected, seed, folds, test_size, links,
                                                              max_distance, min_correlation, test_sources))
    write_csv_atomic(out / "manifest.csv", records, MANIFEST_COLUMNS)
    return records


def partition_rows(rows, role, fold):
    """Manifest rows of one partition: the one partition rule every stage uses.

    Args:
        rows: list of dict. Manifest rows (`load_manifest`).
        role: str. `train` (the training folds of `fold`), `valid` (fold `fold` of the training split), `test`
            (the held-out test split) or `all`.
        fold: int or str. The validation fold.

    Returns:
        list of dict. The rows of that partition, in manifest order.

    Raises:
        ValueError: an unknown `role` (a programming error, not user input).
    """
    fold = str(fold)
    if role == "test":
        return [r for r in rows if r["split"] == "test"]
    if role == "valid":
        return [r for r in rows if r["split"] == "train" and r["fold"] == fold]
    if role == "train":
        return [r for r in rows if r["split"] == "train" and r["fold"] != fold]
    if role == "all":
        return list(rows)
    raise ValueError(f"role must be train, valid, test or all. Received: {role!r}.")


def validation_folds(rows):
    """The validation folds a manifest defines (the values `--fold` may take), sorted.

    Args:
        rows: list of dict. Manifest rows (`load_manifest`).

    Returns:
        list of int. The folds of the training split.
    """
    return sorted({int(r["fold"]) for r in rows if r["split"] == "train" and r["fold"]})


def load_manifest(path):
    """Read a manifest.csv (a file or a work directory) and check its columns and labels.

    Args:
        path: str or `pathlib.Path`. `manifest.csv`, or the work directory holding it.

    Returns:
        list of dict. The rows, all values str (`fold` is `""` for test rows).

    Raises:
        FileNotFoundError: no manifest at `path`.
        DatasetError: a column of `MANIFEST_COLUMNS` is missing (an older manifest), or a
            label is not one of `CLASS_NAMES`; the message names the file (and row).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found; run `prepare-data` first")
    rows = read_csv(path)
    if rows:
        missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing}; written by an older version? "
                               "rerun `prepare-data`")
    for number, row in enumerate(rows, start=2):
        for column in DEMOGRAPHIC_COLUMNS:
            row.setdefault(column, "")
        if row["label"] not in CLASS_NAMES:
            raise DatasetError(f"{path} row {number}: label '{row['label']}' is not one of {list(CLASS_NAMES)}")
    return rows
