"""Readers that turn each dataset layout into candidate manifest records.

Each reader returns `(records, rejected)`: a record is a dict with `image_id`,
`path` (absolute), `source`, `patient_id`, `view`, `label` and, where the source records them, `age`, `sex`
and `age_group` (`age_group_of`); a rejection is a
dict with `path`, `source` and `reason`. Nothing is dropped silently: every file or
metadata row a reader leaves out is listed with its reason.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from tfflannel import CLASS_NAMES
from tfflannel.data.io import IMAGE_SUFFIXES
from tfflannel.errors import InputError

log = logging.getLogger(__name__)

FRONTAL_VIEWS = {"PA", "AP", "AP SUPINE", "AP ERECT"}
COVID_FINDINGS = {"COVID-19", "COVID-19, ARDS"}
VIRAL_ORGANISMS = {"SARS", "MERS-COV", "MERS", "INFLUENZA", "VARICELLA", "HERPES", "H1N1", "VIRAL"}
BACTERIAL_ORGANISMS = {
    "STREPTOCOCCUS", "KLEBSIELLA", "LEGIONELLA", "MYCOPLASMA BACTERIAL PNEUMONIA", "MYCOPLASMA",
    "CHLAMYDOPHILA", "E.COLI", "E. COLI", "STAPHYLOCOCCUS", "STAPHYLOCOCCUS AUREUS", "NOCARDIA",
    "BACTERIAL", "KLEBSIELLA PNEUMONIAE", "PSEUDOMONAS",
}
FUNGAL_ORGANISMS = {"PNEUMOCYSTIS", "ASPERGILLOSIS", "FUNGAL"}
CCX_REQUIRED_COLUMNS = ("patientid", "finding", "view", "modality", "filename")
AGE_BINS = ((0, 18, "0-17"), (18, 40, "18-39"), (40, 65, "40-64"), (65, 200, "65+"))
"""Age groups of a recorded age in years: [low, high) -> name."""
DOCUMENTED_AGE_GROUPS = {"kcx": "1-5"}
"""Age groups a source documents for all its patients, where it records no age per film: the Kaggle pneumonia
set (Kermany et al. 2018) is of children aged one to five. Never turned into an invented age."""


def age_group_of(age, source=""):
    """The age group of a film: its recorded age's bin (`AGE_BINS`), else its source's documented group, else "".

    Args:
        age: str. The recorded age in years (may be empty or not a number).
        source: str. The film's source (`DOCUMENTED_AGE_GROUPS`). Defaults to `""`.

    Returns:
        str. E.g. `"40-64"`, `"1-5"`, or `""` when unknown.
    """
    try:
        years = float(age)
    except (TypeError, ValueError):
        return DOCUMENTED_AGE_GROUPS.get(source, "")
    for low, high, name in AGE_BINS:
        if low <= years < high:
            return name
    return ""


def _demographics(age, sex, source, age_group=""):
    """`age`, `sex` and `age_group` fields of a record; an age that is not a number is left out."""
    age = (age or "").strip()
    try:
        age = f"{float(age):g}" if age else ""
    except ValueError:
        age = ""
    sex = (sex or "").strip().upper()[:1]
    return {"age": age, "sex": sex if sex in ("M", "F") else "",
            "age_group": (age_group or "").strip() or age_group_of(age, source)}


class DatasetError(InputError):
    """Input that cannot be read at all (missing metadata, missing column, empty folder)."""


def map_ccx_finding(finding, fungal_as_bacterial=False):
    """Map a COVID-collection `finding` (flat or hierarchical form) to a label.

    The hierarchical form is `Pneumonia/<Viral|Bacterial|Fungal>/<organism>`; the
    leaf (last part) or the pneumonia kind decides. `No Finding` is normal, COVID-19
    leaves are covid19, organisms in `VIRAL_ORGANISMS`/`BACTERIAL_ORGANISMS` are viral
    or bacterial pneumonia, fungal ones are excluded unless `fungal_as_bacterial`.

    Args:
        finding: str or None. The metadata's `finding` cell (case-insensitive).
        fungal_as_bacterial: bool. Label fungal pneumonia as bacterial, as the original
            FLANNEL did. Defaults to `False`.

    Returns:
        (label, reason): label is one of CLASS_NAMES or None; reason explains a None
        and is `""` otherwise.
    """
    text = (finding or "").strip()
    if not text:
        return None, "empty finding"
    parts = [part.strip() for part in text.split("/")]
    leaf = parts[-1].upper()
    kind = parts[1].upper() if len(parts) >= 3 and parts[0].upper() == "PNEUMONIA" else None
    if text.upper() == "NO FINDING" or leaf == "NO FINDING":
        return "normal", ""
    if leaf in COVID_FINDINGS or leaf.startswith("COVID-19"):
        return "covid19", ""
    if kind == "VIRAL" or leaf in VIRAL_ORGANISMS:
        return "viral_pneumonia", ""
    if kind == "BACTERIAL" or leaf in BACTERIAL_ORGANISMS:
        return "bacterial_pneumonia", ""
    if kind == "FUNGAL" or leaf in FUNGAL_ORGANISMS:
        if fungal_as_bacterial:
            return "bacterial_pneumonia", ""
        return None, (f"fungal finding '{text}' excluded "
                      "(set data.fungal_as_bacterial to label it bacterial as the original did)")
    return None, f"finding '{text}' maps to none of {list(CLASS_NAMES)}"


def _open_metadata(metadata_path):
    if not metadata_path.is_file():
        raise DatasetError(f"{metadata_path}: metadata.csv not found "
                           "(expected a COVID chest X-ray collection checkout with metadata.csv and images/)")
    with open(metadata_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {name.strip().lower(): name for name in (reader.fieldnames or [])}
        missing = [name for name in CCX_REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise DatasetError(f"{metadata_path}: missing required column(s) {missing}; found {list(columns)}")
        rows = [{key: (row.get(original) or "").strip() for key, original in columns.items()} for row in reader]
    return rows


def _check_ccx_row(row, path, fungal_as_bacterial):
    """Return (label, view, reason): reason is empty when the row is kept."""
    if "X-RAY" not in row["modality"].upper().replace(" ", "-"):
        return None, None, f"modality '{row['modality']}' is not X-ray"
    view = " ".join(row["view"].split())
    if view.upper() not in FRONTAL_VIEWS:
        return None, None, f"view '{row['view']}' is not frontal (AP/PA)"
    label, reason = map_ccx_finding(row["finding"], fungal_as_bacterial)
    if label is None:
        return None, None, reason
    if not row["filename"] or not path.is_file():
        return None, None, "image file missing"
    if not row["patientid"]:
        return None, None, "empty patientid"
    return label, view, ""


def read_ccx(root, fungal_as_bacterial=False):
    """Read a COVID chest X-ray collection checkout (`metadata.csv` + `images/`).

    Keeps X-ray frontal views (PA, AP, AP Supine, AP Erect) whose finding maps to
    one of the four labels; patient id = `ccx:<patientid>`, image id =
    `ccx:<file stem>`. Every other metadata row is rejected with its reason and
    its `metadata.csv` line.

    Args:
        root: str or `pathlib.Path`. The checkout holding `metadata.csv` and `images/`.
        fungal_as_bacterial: bool. Passed to `map_ccx_finding`. Defaults to `False`.

    Returns:
        (records, rejected): lists of dicts as described in the module docstring.

    Raises:
        DatasetError: `metadata.csv` is missing or lacks a column of `CCX_REQUIRED_COLUMNS`.
    """
    root = Path(root).resolve()
    rows = _open_metadata(root / "metadata.csv")
    records, rejected = [], []
    for line, row in enumerate(rows, start=2):
        path = root / "images" / row["filename"]
        label, view, reason = _check_ccx_row(row, path, fungal_as_bacterial)
        if reason:
            where = f"{root / 'metadata.csv'} line {line} ({row['filename']})"
            rejected.append({"path": str(path), "source": "ccx", "reason": f"{reason} [{where}]"})
            continue
        records.append({
            "image_id": f"ccx:{Path(row['filename']).stem}",
            "path": str(path),
            "source": "ccx",
            "patient_id": f"ccx:{row['patientid']}",
            "view": view,
            "label": label,
            **_demographics(row.get("age"), row.get("sex"), "ccx"),
        })
    return records, rejected


_KCX_PNEUMONIA = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_KCX_NORMAL = re.compile(r"IM-(\d+)-", re.IGNORECASE)


def _kcx_label_and_patient(folder, name):
    """(label, patient) of a Kaggle pneumonia file from its class folder and file name; patient None if it gives none.

    NORMAL files are `...IM-XXXX...` (label normal); PNEUMONIA files are `personN_bacteria_...` or
    `personN_virus_...` (the type gives the label).
    """
    if folder == "NORMAL":
        match = _KCX_NORMAL.search(name)
        return "normal", (f"IM-{match.group(1)}" if match else None)
    match = _KCX_PNEUMONIA.match(name)
    if not match:
        return None, None
    label = "bacterial_pneumonia" if match.group(2).lower() == "bacteria" else "viral_pneumonia"
    return label, match.group(1).lower()


def read_kcx(root):
    """Read the Kaggle pneumonia layout `{train,val,test}/{NORMAL,PNEUMONIA}/*`.

    The dataset's own train/val/test folders are pooled (they are re-split by
    patient later). Patient id = `kcx:personN` or `kcx:IM-XXXX`; view AP. The
    pneumonia type (bacteria or virus) comes from the file name; a file name without
    a patient id (or type) is rejected.

    Args:
        root: str or `pathlib.Path`. The dataset folder (e.g. `chest_xray/`).

    Returns:
        (records, rejected): lists of dicts as described in the module docstring.

    Raises:
        DatasetError: `root` does not exist or holds none of the
            `{train,val,test}/{NORMAL,PNEUMONIA}` folders.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: Kaggle pneumonia folder not found")
    records, rejected = [], []
    seen_class_dir = False
    for part in ("train", "val", "test"):
        for folder in ("NORMAL", "PNEUMONIA"):
            directory = root / part / folder
            if not directory.is_dir():
                continue
            seen_class_dir = True
            for path in sorted(directory.iterdir()):
                if not path.is_file():
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    rejected.append({"path": str(path), "source": "kcx", "reason": "not an image file name"})
                    continue
                label, patient = _kcx_label_and_patient(folder, path.name)
                if patient is None:
                    reason = "file name gives no patient id or pneumonia type"
                    rejected.append({"path": str(path), "source": "kcx", "reason": reason})
                    continue
                records.append({
                    "image_id": f"kcx:{part}/{folder}/{path.stem}",
                    "path": str(path),
                    "source": "kcx",
                    "patient_id": f"kcx:{patient}",
                    "view": "AP",
                    "label": label,
                    **_demographics("", "", "kcx"),
                })
    if not seen_class_dir:
        raise DatasetError(f"{root}: no {{train,val,test}}/{{NORMAL,PNEUMONIA}} folders found")
    return records, rejected


def _read_patients_csv(patients_csv):
    """{filename: row} of a generic folder's `patients.csv`.

    Raises:
        DatasetError: the file lacks the `filename` or `patient_id` column.
    """
    table = {}
    with open(patients_csv, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not {"filename", "patient_id"} <= set(reader.fieldnames or []):
            raise DatasetError(
                f"{patients_csv}: needs columns 'filename' and 'patient_id'; found {reader.fieldnames}"
            )
        for row in reader:
            table[row["filename"].strip()] = row
    return table


def read_folder(root):
    """Read a generic `DIR/<label>/*` layout with an optional `DIR/patients.csv`.

    patients.csv columns: `filename` (relative to DIR, or a bare file name) and
    `patient_id`; optional `source`, `view`, `age` (years), `sex` and `age_group`. Without a patient id an image is
    its own patient (`image:<relative path>`), which cannot protect against leakage:
    a warning at run time and statistics.md say so. Files under a folder that is not a label, and files
    without an image suffix, are rejected. Source defaults to the folder's name, view
    to `unknown`.

    Args:
        root: str or `pathlib.Path`. The folder holding one sub-folder per label.

    Returns:
        (records, rejected): lists of dicts as described in the module docstring.

    Raises:
        DatasetError: `root` does not exist, holds no file at all, or its `patients.csv`
            lacks the `filename` or `patient_id` column.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found")
    patients_csv = root / "patients.csv"
    table = _read_patients_csv(patients_csv) if patients_csv.is_file() else {}
    records, rejected = [], []
    source_default = root.name.replace(":", "_") or "folder"
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            if directory.name not in CLASS_NAMES:
                reason = f"label folder '{directory.name}' is not one of {list(CLASS_NAMES)}"
                rejected.append({"path": str(path), "source": "folder", "reason": reason})
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                rejected.append({"path": str(path), "source": "folder", "reason": "not an image file name"})
                continue
            relative = path.relative_to(root).as_posix()
            meta = table.get(relative) or table.get(path.name) or {}
            patient = (meta.get("patient_id") or "").strip() or f"image:{relative}"
            source = (meta.get("source") or "").strip() or source_default
            records.append({
                "image_id": f"{source}:{Path(relative).with_suffix('').as_posix()}",
                "path": str(path),
                "source": source,
                "patient_id": patient,
                "view": (meta.get("view") or "").strip() or "unknown",
                "label": directory.name,
                **_demographics(meta.get("age"), meta.get("sex"), source, meta.get("age_group")),
            })
    if not records and not rejected:
        raise DatasetError(f"{root}: empty folder (expected DIR/<label>/* with labels {list(CLASS_NAMES)})")
    _warn_own_patients(root, records, patients_csv)
    return records, rejected


def _warn_own_patients(root, records, patients_csv):
    """Warn when images of a folder have no patient id: each is then its own patient, the grouping is lost."""
    alone = sum(1 for r in records if r["patient_id"].startswith("image:"))
    if not alone:
        return
    where = f"not listed in {patients_csv}" if patients_csv.is_file() else f"no {patients_csv.name}"
    log.warning("%s: %d of %d images have no patient id (%s): each is its own patient, so films of one patient "
                "can land in different partitions (leakage); add DIR/patients.csv with columns "
                "filename,patient_id[,source,view]", root, alone, len(records), where)
