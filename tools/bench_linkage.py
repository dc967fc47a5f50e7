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
import contextlib
import csv
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tfflannel.data.io import read_image  # noqa: E402
from tfflannel.data.linkage import Link, group_patients, hamming_candidates, thumbnail_correlation  # noqa: E402
from tfflannel.data.manifest import _check_image, prepare_manifest  # noqa: E402
from tfflannel.utils import sha256_of_file  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-cls"


def near_copy(image, rng):
    """A resized (long side 512-2048), shifted (<= 0.5 %) copy of a PIL image.

    Args:
        image: `PIL.Image.Image`. The original film.
        rng: `numpy.random.Generator`. Draws the shift (a crop of 0 to 0.5 % of each side from the
            top left) and the new long side.

    Returns:
        `PIL.Image.Image`. The shifted copy resized bicubically, aspect ratio kept, sides >= 8 px.
    """
    width, height = image.size
    dx, dy = (int(rng.integers(0, max(1, round(0.005 * side)) + 1)) for side in (width, height))
    shifted = image.crop((dx, dy, width, height)) if dx or dy else image
    long_side = int(rng.integers(512, 2049))
    scale = long_side / max(width, height)
    return shifted.resize((max(8, round(width * scale)), max(8, round(height * scale))), Image.Resampling.BICUBIC)


def generate(out, films, seed=0):
    """Write a synthetic collection of `films` films built from the shared cxr-cls set.

    Copy 0 of each shared film is a symlink (`<label>/<stem>.png`); copies 1, 2, ... are
    `near_copy` JPEGs (quality 60-95) named `<label>/<stem>__copyNN.jpg`, until `films` files
    exist. Every copy gets its own patient id (`copyNN:<stem>`) in `out/patients.csv`, so only
    linkage can tie copies of one film together. Existing files are kept (the collection is reused).

    Args:
        out: pathlib.Path. Folder to write (`DIR/<label>/*` layout for `--folder`).
        films: int. Number of films.
        seed: int. Seeds which copy gets which shift, size and quality. Defaults to `0`.

    Returns:
        dict. File name relative to `out` -> (stem of the original film, its `group_id` in labels.csv).
    """
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


class Clock:
    """Wall and CPU seconds (all threads of this process) per named stage."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    @contextlib.contextmanager
    def __call__(self, name):
        """Time the `with` block under `name` (wall: `perf_counter`, CPU: `process_time`)."""
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[name], self.cpu[name] = time.perf_counter() - wall, time.process_time() - cpu

    def line(self, title, name, note):
        """Print one table row: `title`, the wall and CPU seconds recorded under `name`, and `note`."""
        print(f"{title:<40}{self.wall[name]:7.2f}  {self.cpu[name]:7.2f}   {note}")


def decode_only(record):
    """Decode a record's image and hash its file, as the manifest pass did before linking.

    Args:
        record: dict. A source record with a `path` key.

    Returns:
        str. The file's hex sha256.
    """
    read_image(record["path"])
    return sha256_of_file(record["path"])


def main():
    """Parse the options, build (or reuse) the synthetic collection, time each linkage stage and print the table."""
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
    clock = Clock()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        with clock("plain"):
            list(pool.map(decode_only, records))
        with clock("hashed"):
            checked = [record for record, error in pool.map(_check_image, records) if not error]
    with clock("search"):
        i, j, distance = hamming_candidates([r["_dhash"] for r in checked], args.max_distance)
    with clock("confirm"):
        correlation = thumbnail_correlation([r["_thumbnail"] for r in checked], i, j)
    keep = correlation >= args.min_correlation
    with clock("union"):
        links = [Link("near-identical", checked[a]["image_id"], checked[b]["image_id"], checked[a]["patient_id"],
                      checked[b]["patient_id"], "", "", int(d), float(c))
                 for a, b, d, c in zip(i[keep], j[keep], distance[keep], correlation[keep], strict=True)]
        groups = group_patients([r["patient_id"] for r in checked], links)

    by_original = collections.defaultdict(set)    # original film -> groups its copies landed in
    by_group = collections.defaultdict(set)       # found group -> shared-set groups (patients) inside it
    for record in checked:
        stem, shared_group = truth[record["image_id"]]
        by_original[stem].add(groups[record["patient_id"]])
        by_group[groups[record["patient_id"]]].add(shared_group)
    split_originals = sum(len(found) > 1 for found in by_original.values())
    merged = sum(len(found) > 1 for found in by_group.values())
    with clock("end to end"):
        rows = prepare_manifest(out.with_name(out.name + "-work"), folders=[out], progress=False,
                                max_distance=args.max_distance, min_correlation=args.min_correlation)
    pairs = len(checked) * (len(checked) - 1) // 2
    print("stage                                   wall s    CPU s (all threads of this process)")
    clock.line("decoding + sha256 pass (before linking)", "plain", f"{len(records)} films")
    clock.line("same pass + dHash + 64x64 thumbnail", "hashed",
               f"x{clock.wall['hashed'] / clock.wall['plain']:.2f} wall, "
               f"x{clock.cpu['hashed'] / clock.cpu['plain']:.2f} CPU of the plain pass")
    clock.line(f"candidate search (dHash <= {args.max_distance})", "search",
               f"{len(i):,} candidates of {pairs:,} pairs")
    clock.line(f"confirmation (correlation >= {args.min_correlation})", "confirm", f"{int(keep.sum()):,} confirmed")
    clock.line("union-find over patient ids", "union", f"{len(set(groups.values()))} groups")
    clock.line("prepare_manifest end to end", "end to end",
               f"{len(rows)} films, {len({r['group_id'] for r in rows})} groups")
    extra = sum(clock.wall[k] for k in ("search", "confirm", "union")) + clock.wall["hashed"] - clock.wall["plain"]
    print(f"linking adds {extra:.1f} s wall to the decoding pass; originals whose copies fell into more than one "
          f"group: {split_originals} of {len(by_original)}; groups joining two shared-set patients: {merged}")
    print(f"load average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs "
          "(CPU seconds are less affected by other jobs than wall seconds)")

if __name__ == "__main__":
    main()
