"""Time patient linking (dHash + thumbnail correlation) on a Kaggle-plus-collection-sized set of generated near-copies.

Generates `--films` films (default 6,806 = the Kaggle pneumonia set's 5,856 + ~950 of the COVID collection) from
the shared cxr-cls images: every original plus near-copies, each resized to a long side of 512-2048 px (Kaggle
films are about 1,000-2,500 px), JPEG-recompressed at quality 60-95 and shifted by up to 0.5 % of its side, each
under its own patient id and a source of its own (`copyNN`). Then, side by side in one run:

1. the decoding pass without fingerprints (read_image + sha256, the pass `prepare-data` made before linking);
2. the same pass with fingerprints (`manifest._check_image`, what `prepare-data` runs now): the ratio is the
   cost of the hashes;
3. candidate search (`hamming_candidates`, dHash <= max distance), confirmation (`thumbnail_correlation` on
   the candidates), union-find (`group_patients`);
4. `prepare_manifest` end to end on the folder (what `prepare-data --folder` runs: all of the above, the split
   and the outputs).

Prints the times and whether every copy joined its original's group and no two originals were merged.
Asserts nothing. The generated set (~1.5 GB) is kept under --data for reruns.

    python tools/bench_linkage.py [--films 6806] [--data /tmp/tfflannel-linkage-bench] [--workers 2]
"""

import argparse
import collections
import csv
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tfflannel.data.io import read_image, sha256_of_file  # noqa: E402
from tfflannel.data.linkage import Link, group_patients, hamming_candidates, thumbnail_correlation  # noqa: E402
from tfflannel.data.manifest import _check_image, prepare_manifest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-cls"


def near_copy(image, rng):
    """A resized (long side 512-2048), shifted (<= 0.5 %) copy of a PIL image."""
    width, height = image.size
    dx, dy = (int(rng.integers(0, max(1, round(0.005 * side)) + 1)) for side in (width, height))
    shifted = image.crop((dx, dy, width, height)) if dx or dy else image
    long_side = int(rng.integers(512, 2049))
    scale = long_side / max(width, height)
    return shifted.resize((max(8, round(width * scale)), max(8, round(height * scale))), Image.Resampling.BICUBIC)


def generate(out, films, seed=0):
    """Write DIR/<label>/*.{png,jpg} and DIR/patients.csv; return {file: original} for every film."""
    rows = list(csv.DictReader(open(SHARED / "labels.csv", newline="")))
    rng = np.random.default_rng(seed)
    jobs = []
    for copy in range(-(-films // len(rows))):
        for row in rows:
            if len(jobs) < films:
                jobs.append((copy, row, int(rng.integers(0, 2**31))))

    def write(job):
        copy, row, job_seed = job
        stem = Path(row["filename"]).stem
        name = f"{row['label']}/{stem}.png" if copy == 0 else f"{row['label']}/{stem}__copy{copy:02d}.jpg"
        target = out / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            if copy == 0:
                os.symlink(SHARED / row["filename"], target)
            else:
                local = np.random.default_rng(job_seed)
                image = near_copy(Image.open(SHARED / row["filename"]).convert("L"), local)
                image.save(target, "JPEG", quality=int(local.integers(60, 96)))
        return name, stem, copy, row["group_id"]

    with ThreadPoolExecutor(max_workers=2) as pool:
        made = list(pool.map(write, jobs))
    with open(out / "patients.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "patient_id", "source", "view"])
        for name, stem, copy, _ in made:
            writer.writerow([name, f"copy{copy:02d}:{stem}", f"copy{copy:02d}", "PA"])
    return {name: (stem, group) for name, stem, _, group in made}


def decode_only(record):
    read_image(record["path"])
    return sha256_of_file(record["path"])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--films", type=int, default=5856 + 950)
    parser.add_argument("--data", default="/tmp/tfflannel-linkage-bench")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--max-distance", type=int, default=8)
    parser.add_argument("--min-correlation", type=float, default=0.97)
    args = parser.parse_args()
    if not (SHARED / "labels.csv").is_file():
        sys.exit(f"needs the shared classification set at {SHARED}")
    out = Path(args.data)
    started = time.perf_counter()
    truth = generate(out, args.films)
    print(f"{len(truth)} films under {out} ({time.perf_counter() - started:.1f} s to generate or find); "
          f"{os.cpu_count()} CPUs, {args.workers} decoding threads")

    records = []
    for name in sorted(truth):
        stem, _ = truth[name]
        copy = name.rsplit("__copy", 1)[-1][:2] if "__copy" in name else "00"
        records.append({"image_id": name, "path": str(out / name), "patient_id": f"copy{copy}:{stem}",
                        "label": name.split("/")[0]})
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        start = time.perf_counter()
        list(pool.map(decode_only, records))
        plain = time.perf_counter() - start
        start = time.perf_counter()
        checked = [record for record, error in pool.map(_check_image, records) if not error]
        hashed = time.perf_counter() - start
    start = time.perf_counter()
    i, j, distance = hamming_candidates([r["_dhash"] for r in checked], args.max_distance)
    search = time.perf_counter() - start
    start = time.perf_counter()
    correlation = thumbnail_correlation([r["_thumbnail"] for r in checked], i, j)
    confirm = time.perf_counter() - start
    keep = correlation >= args.min_correlation
    start = time.perf_counter()
    links = [Link("near-identical", checked[a]["image_id"], checked[b]["image_id"], checked[a]["patient_id"],
                  checked[b]["patient_id"], "", "", int(d), float(c))
             for a, b, d, c in zip(i[keep], j[keep], distance[keep], correlation[keep], strict=True)]
    groups = group_patients([r["patient_id"] for r in checked], links)
    union = time.perf_counter() - start

    by_original = collections.defaultdict(set)    # original film -> groups its copies landed in
    by_group = collections.defaultdict(set)       # found group -> shared-set groups (patients) inside it
    for record in checked:
        stem, shared_group = truth[record["image_id"]]
        by_original[stem].add(groups[record["patient_id"]])
        by_group[groups[record["patient_id"]]].add(shared_group)
    split_originals = sum(len(found) > 1 for found in by_original.values())
    merged = sum(len(found) > 1 for found in by_group.values())
    print(f"decoding + sha256 pass:              {plain:7.1f} s  ({len(records) / plain:.0f} films/s)")
    print(f"same pass + dHash + 64x64 thumbnail: {hashed:7.1f} s  (x{hashed / plain:.2f} of the plain pass)")
    print(f"candidate search (dHash <= {args.max_distance}):    {search:7.2f} s  ({len(i):,} candidate pairs of "
          f"{len(checked) * (len(checked) - 1) // 2:,})")
    print(f"confirmation (correlation >= {args.min_correlation}): {confirm:5.2f} s  ({int(keep.sum()):,} confirmed)")
    print(f"union-find over patient ids:         {union:7.2f} s  ({len(set(groups.values()))} groups)")
    print(f"linking total (hash pass + search + confirmation + union-find): {hashed + search + confirm + union:.1f} s"
          f"; extra over the plain pass: {hashed - plain + search + confirm + union:.1f} s")
    print(f"originals whose copies fell into more than one group: {split_originals} of {len(by_original)}; "
          f"groups joining two shared-set patients: {merged}")
    start = time.perf_counter()
    rows = prepare_manifest(out.with_name(out.name + "-work"), folders=[out], progress=False,
                            max_distance=args.max_distance, min_correlation=args.min_correlation)
    print(f"prepare_manifest end to end:         {time.perf_counter() - start:7.1f} s  ({len(rows)} films, "
          f"{len({r['group_id'] for r in rows})} groups)")
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
