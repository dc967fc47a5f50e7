"""Build `manifest.csv`, `rejected.csv` and `statistics.md` from the dataset readers.

The manifest is the contract every later stage reads: one row per kept image
with a stable `image_id`, its patient, the patient group it is split with
(`group_id`: patient ids linked by identical or near-identical films,
`tfflannel.data.linkage`), label, file hash and partition.
"""

from __future__ import annotations

import collections
import os
import platform
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

from tqdm.auto import tqdm

from tfflannel import CLASS_NAMES
from tfflannel.data.io import ImageReadError, read_image
from tfflannel.data.linkage import Link, fingerprint_image, group_patients, link_near_identical
from tfflannel.data.sources import DatasetError, read_ccx, read_folder, read_kcx
from tfflannel.data.split import assign_external_splits, assign_splits
from tfflannel.errors import InputError
from tfflannel.utils import read_csv, sha256_of_file, write_csv_atomic, write_text_atomic

REQUIRED_COLUMNS = ("image_id", "path", "source", "patient_id", "view", "label", "sha256", "split", "fold",
                    "group_id")
"""Columns every manifest has; `load_manifest` refuses one without them."""
DEMOGRAPHIC_COLUMNS = ("age", "sex", "age_group")
"""Written where a source records them (empty otherwise); a manifest made before they existed reads them as empty."""
MANIFEST_COLUMNS = REQUIRED_COLUMNS + DEMOGRAPHIC_COLUMNS
REJECTED_COLUMNS = ("path", "source", "reason")
# Libraries whose algorithms decide the split (scikit-learn, NumPy's RandomState), the film links (Pillow's
# resampling, SciPy) and the metrics (scikit-learn); statistics.md records their versions.
DECIDING_LIBRARIES = ("scikit-learn", "numpy", "scipy", "Pillow")


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


def _markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _partition(row):
    return "test" if row["split"] == "test" else f"fold {row['fold']}"


def library_versions():
    """Versions of Python and of the libraries that decide the split, the links and the metrics.

    Returns:
        dict. `python` and each name of `DECIDING_LIBRARIES` -> installed version string,
        or `"not installed"`.
    """
    versions = {"python": platform.python_version()}
    for name in DECIDING_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _links_section(rows, links, max_distance, min_correlation):
    merges = [link for link in links if link.patient_a != link.patient_b]
    header = ["kind", "patient a", "patient b", "film a", "film b", "dHash distance", "correlation"]
    text = (f"## Patient links\n\nPatient ids are merged into one split group when they share a file (listed "
            f"twice in metadata, or identical by sha256) or a near-identical film (dHash distance <= {max_distance} "
            f"and 64x64 thumbnail correlation >= {min_correlation}). {len(merges)} links join different patient ids")
    if not merges:
        return text + "."
    members = collections.defaultdict(set)
    for row in rows:
        members[row["group_id"]].add(row["patient_id"])
    largest = min(members, key=lambda group: (-len(members[group]), group))
    table = [[link.kind, link.patient_a, link.patient_b, link.image_a, link.image_b, link.distance,
              f"{link.correlation:.4f}"] for link in merges]
    return (text + f"; the largest group, {largest}, holds {len(members[largest])} patient ids of kept films "
            "(a large group means a chain of links: check them):\n\n" + _markdown_table(header, table))


def _conflicts_section(links):
    conflicts = [link for link in links if link.label_a != link.label_b]
    if not conflicts:
        return ""
    header = ["kind", "film a", "label a", "film b", "label b", "dHash distance", "correlation"]
    rows = [[link.kind, link.image_a, link.label_a, link.image_b, link.label_b, link.distance,
             f"{link.correlation:.4f}"] for link in conflicts]
    return ("## Films linked to two labels\n\nWarning: these films are the same film (or a near-identical copy) "
            "under two labels. Identical files and files listed twice are excluded (rejected.csv); near-identical "
            "ones are kept, in one partition, but their labels disagree: check them.\n\n"
            + _markdown_table(header, rows))


def confound_table(rows):
    """Markdown: images per class x source x age group (the confound a classifier can learn instead of the lungs)."""
    keys = sorted({(r["source"], r.get("age_group") or "unknown") for r in rows})
    table = [[source, group] + [sum(1 for r in rows if (r["source"], r.get("age_group") or "unknown") == (source, group)
                                    and r["label"] == c) for c in CLASS_NAMES]
             + [sum(1 for r in rows if (r["source"], r.get("age_group") or "unknown") == (source, group))]
             for source, group in keys]
    return ("## Class x source x age group\n\nThe confound: where a class comes from one source and one age group "
            "only, a classifier can separate it by source or age cues (film markers, scanner, body size) instead of "
            "the lungs (`audit` measures whether it does). Age groups: the recorded age's bin, or the age group a "
            "source documents for all its patients (Kaggle pneumonia set: children aged 1-5); `unknown` otherwise."
            "\n\n" + _markdown_table(["source", "age group", *CLASS_NAMES, "total"], table))


def format_statistics(rows, rejected, seed, folds, test_size, links=(), max_distance=8, min_correlation=0.97,
                      test_sources=()):
    """A Table-2-like summary: counts per source, view and partition, patients, links and library versions.

    Args:
        rows: list of dict. Manifest rows, with `split`, `fold` and `group_id` assigned.
        rejected: list of dict. Rejections (`path`, `source`, `reason`); counted by reason.
        seed: int. Split seed, quoted in the text.
        folds: int. Number of folds; one partition row per fold.
        test_size: float. Test share, quoted in the text.
        links: sequence of `Link`. Patient links found; summarised with any label conflicts.
            Defaults to `()`.
        max_distance: int. dHash threshold used, quoted in the text. Defaults to `8`.
        min_correlation: float. Correlation threshold used, quoted in the text. Defaults to `0.97`.
        test_sources: sequence of str. The sources held out as the test set (external validation). Defaults to `()`.

    Returns:
        str. The Markdown text of `statistics.md`.
    """
    def count_table(key, title):
        values = sorted({key(r) for r in rows}, key=str)
        table = [[value] + [sum(1 for r in rows if key(r) == value and r["label"] == c) for c in CLASS_NAMES]
                 + [sum(1 for r in rows if key(r) == value)] for value in values]
        table.append(["total"] + [sum(1 for r in rows if r["label"] == c) for c in CLASS_NAMES] + [len(rows)])
        return f"## {title}\n\n" + _markdown_table([title.split()[-1]] + list(CLASS_NAMES) + ["total"], table)

    partitions = ["test"] + [f"fold {k}" for k in range(1, folds + 1)]
    patients = [[p, len({r["patient_id"] for r in rows if _partition(r) == p}),
                 len({r["group_id"] for r in rows if _partition(r) == p}),
                 sum(1 for r in rows if _partition(r) == p)] for p in partitions]
    own_patient = sum(1 for r in rows if r["patient_id"].startswith("image:"))
    reasons = collections.Counter("duplicate (same sha256)" if r["reason"].startswith("duplicate (same sha256)")
                                  else r["reason"].split(" [")[0].split(":")[0] for r in rejected)
    parts = [
        "# Dataset statistics",
        f"{len(rows)} images from {len({r['patient_id'] for r in rows})} patients kept; "
        f"{len(rejected)} inputs rejected "
        f"(see rejected.csv). Split: "
        + (f"external validation, test set = every film of source(s) {', '.join(test_sources)}" if test_sources
           else f"test share {test_size}") + f", {folds} folds, seed {seed}, grouped by patient group "
        f"({len({r['group_id'] for r in rows})} groups: patient ids linked by shared films) and stratified by label.",
        count_table(lambda r: r["source"], "Images per source"),
        count_table(lambda r: r["view"], "Images per view"),
        confound_table(rows),
        count_table(_partition, "Images per partition"),
        "## Patients per partition\n\n" + _markdown_table(["partition", "patients", "groups", "images"], patients),
        _links_section(rows, links, max_distance, min_correlation),
    ]
    conflicts = _conflicts_section(links)
    if conflicts:
        parts.append(conflicts)
    if own_patient:
        parts.append(f"Warning: {own_patient} images had no patient id and count as their own patient; "
                     "patient leakage cannot be ruled out for them.")
    if reasons:
        parts.append("## Rejections\n\n" + _markdown_table(["reason", "inputs"], sorted(reasons.items())))
    sources = {r["source"] for r in rows}
    if len(sources) > 1:
        parts.append("Caveat: sources differ in population (the COVID collection is mostly adult films, the "
                     "Kaggle pneumonia set paediatric); a classifier can separate classes by source cues.")
    versions = library_versions()
    parts.append("## Library versions\n\nThe split and the metrics depend on these releases (setup.cfg pins the "
                 "compatible range):\n\n" + _markdown_table(["library", "version"], sorted(versions.items())))
    return "\n\n".join(parts) + "\n"


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
