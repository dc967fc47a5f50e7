"""Build COVID-collection- and Kaggle-shaped folders from the bundled sample's real images."""

import csv
from pathlib import Path

from PIL import Image

from tfflannel.sample import SAMPLE_DIR


def build_ccx(root, edit_rows=None, extra_rows=()):
    """A `metadata.csv` + `images/` checkout holding the sample's ieee8023 images under their original names.

    edit_rows: optional callable(row) -> row or None, applied to each real metadata row.
    extra_rows: extra metadata rows (dicts) whose `filename` images are copied from a real sample image.
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    by_stem = {p.name.split("__", 1)[1].rsplit(".", 1)[0]: p for p in (SAMPLE_DIR / "cls").glob("*/ieee8023__*.png")}
    with open(SAMPLE_DIR / "ieee8023_metadata_rows.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames
        rows = list(reader)
    out_rows = []
    for row in rows:
        stem = row["filename"].rsplit(".", 1)[0]
        source = by_stem[stem]
        (
            Image.open(source).convert("L").save(root / "images" / row["filename"], quality=95)
            if row["filename"].lower().endswith((".jpg", ".jpeg"))
            else Image.open(source).save(root / "images" / row["filename"])
        )
        row = edit_rows(dict(row)) if edit_rows else row
        if row is not None:
            out_rows.append(row)
    donor = next(iter(by_stem.values()))
    for extra in extra_rows:
        full = {field: "" for field in fields}
        full.update(extra)
        if full["filename"] and not (root / "images" / full["filename"]).exists():
            Image.open(donor).convert("L").rotate(len(out_rows)).save(root / "images" / full["filename"])
        out_rows.append(full)
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(out_rows)
    return root


def build_kcx(root):
    """The Kaggle layout {train,val,test}/{NORMAL,PNEUMONIA}/ with the sample's Kermany images as JPEGs."""
    root = Path(root)
    files = sorted((SAMPLE_DIR / "cls").glob("*/kermany__*.png"))
    for index, path in enumerate(files):
        original = path.name.split("__", 1)[1].rsplit(".", 1)[0] + ".jpeg"
        part = ("train", "val", "test")[index % 3]
        folder = "NORMAL" if path.parent.name == "normal" else "PNEUMONIA"
        target = root / part / folder / original
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("L").save(target, quality=95)
    return root
