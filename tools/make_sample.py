"""Rebuild the bundled sample (tfflannel/sample/) from ../shared/data.

Picks a small, seeded, licence-aware subset of cxr-cls (10 images per class)
and cxr-seg (20 image/mask pairs) and writes their provenance beside them.
Run from the repository root: `python tools/make_sample.py [--shared ../shared]`.
"""

import argparse
import csv
import random
import shutil
from pathlib import Path

PERMISSIVE = ("CC BY 3.0", "CC BY 4.0", "CC BY", "CC BY-SA")
PLAN = {  # label -> [(source, count, allowed licences in order of preference)]
    "covid19": [("ieee8023", 10, ("CC BY 3.0", "CC BY 4.0"))],
    "viral_pneumonia": [("kermany", 7, ("CC BY 4.0",)), ("ieee8023", 3, ("CC BY-NC-SA 4.0",))],
    "bacterial_pneumonia": [("kermany", 7, ("CC BY 4.0",)), ("ieee8023", 3, ("CC BY-NC-SA 4.0",))],
    "normal": [("kermany", 7, ("CC BY 4.0",)), ("ieee8023", 3, ("CC BY 3.0", "CC BY 4.0"))],
}
SOURCE_NAME = {"ieee8023": "ccx", "kermany": "kcx"}


def pick_classification(shared, out, rng):
    """Copy the classification subset of `PLAN` and write its patients and provenance tables.

    For each label and source, images whose licence is allowed are sorted by file
    name, shuffled with `rng` and the first `count` kept. Writes `cls/<label>/*.png`,
    `cls/patients.csv`, `provenance_cls.csv` and the matching rows of
    `ieee8023_metadata_rows.csv` under `out`.

    Args:
        shared: pathlib.Path. The shared folder holding `data/cxr-cls`.
        out: pathlib.Path. The sample folder (`tfflannel/sample`).
        rng: `random.Random`. Seeded generator; consumed before `pick_segmentation`.

    Returns:
        list of dict. The chosen rows of `cxr-cls/labels.csv`.
    """
    rows = list(csv.DictReader(open(shared / "data/cxr-cls/labels.csv")))
    chosen = []
    for label, plan in PLAN.items():
        for source, count, licences in plan:
            pool = [r for r in rows if r["label"] == label and r["source"] == source and r["license"] in licences]
            pool.sort(key=lambda r: r["filename"])
            rng.shuffle(pool)
            chosen += pool[:count]
    cls = out / "cls"
    for row in chosen:
        target = cls / row["label"] / Path(row["filename"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / "data/cxr-cls" / row["filename"], target)
    with open(cls / "patients.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["filename", "patient_id", "source", "view"])
        for row in sorted(chosen, key=lambda r: (r["label"], r["filename"])):
            source = SOURCE_NAME[row["source"]]
            patient = row["group_id"].split(":", 1)[1].replace("pid", "")
            view = "AP" if row["source"] == "kermany" else row["view"]
            writer.writerow([f"{row['label']}/{Path(row['filename']).name}", f"{source}:{patient}", source, view])
    fields = ["filename", "label", "source", "view", "license", "provenance", "patient_id", "finding", "doi",
              "orig_width", "orig_height", "width", "height"]
    with open(out / "provenance_cls.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in sorted(chosen, key=lambda r: (r["label"], r["filename"])):
            writer.writerow(dict(row, filename=f"cls/{row['label']}/{Path(row['filename']).name}"))
    names = {
        Path(r["provenance"].split(":images/")[-1].split(" ")[0]).name for r in chosen if r["source"] == "ieee8023"
    }
    meta = list(csv.DictReader(open(shared / "data/cxr-cls/ieee8023_metadata_rows.csv")))
    with open(out / "ieee8023_metadata_rows.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(meta[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(r for r in meta if r["filename"] in names)
    return chosen


def pick_segmentation(shared, out, rng, count=20):
    """Copy `count` image/mask pairs of cxr-seg and write `seg/pairs.csv`.

    Pairs whose image licence is in `PERMISSIVE` come first (in file order); the
    CC BY-NC-SA pairs, sorted and shuffled with `rng`, fill the rest.

    Args:
        shared: pathlib.Path. The shared folder holding `data/cxr-seg`.
        out: pathlib.Path. The sample folder (`tfflannel/sample`).
        rng: `random.Random`. Seeded generator.
        count: int. Number of pairs. Defaults to `20`.

    Returns:
        list of dict. The chosen rows of `cxr-seg/seg_pairs.csv`.
    """
    rows = list(csv.DictReader(open(shared / "data/cxr-seg/seg_pairs.csv")))
    ranked = [r for r in rows if r["image_license"] in PERMISSIVE]
    rest = [r for r in rows if r["image_license"].startswith("CC BY-NC-SA")]
    rest.sort(key=lambda r: r["image"])
    rng.shuffle(rest)
    chosen = (ranked + rest)[:count]
    for row in chosen:
        for key in ("image", "mask"):
            target = out / "seg" / row[key]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shared / "data/cxr-seg" / row[key], target)
    fields = ["image", "mask", "patient_id", "group_id", "finding", "view", "image_license", "mask_license",
              "image_source", "mask_source", "width", "height", "lung_fraction"]
    with open(out / "seg" / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(chosen, key=lambda r: r["image"]))
    return chosen


def main():
    """Parse the options, replace `sample/cls` and `sample/seg` with a fresh seeded pick, print the counts."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "tfflannel" / "sample"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    for sub in ("cls", "seg"):
        shutil.rmtree(out / sub, ignore_errors=True)
    rng = random.Random(args.seed)
    cls = pick_classification(shared, out, rng)
    seg = pick_segmentation(shared, out, rng)
    print(f"wrote {len(cls)} classification images and {len(seg)} segmentation pairs to {out}")


if __name__ == "__main__":
    main()
