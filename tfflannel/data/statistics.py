"""`statistics.md`: the Table-2-like summary of a manifest (counts per source, view, partition; links; versions).

`prepare_manifest` (`tfflannel.data.manifest`) writes it with `format_statistics`.
"""

from __future__ import annotations

import collections
import platform
from importlib import metadata

from tfflannel import CLASS_NAMES

# Libraries whose algorithms decide the split (scikit-learn, NumPy's RandomState), the film links (Pillow's
# resampling, SciPy) and the metrics (scikit-learn); statistics.md records their versions.
DECIDING_LIBRARIES = ("scikit-learn", "numpy", "scipy", "Pillow")


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


def count_table(rows, key, title):
    """Markdown: images per class for each value of `key(row)`, with a total row, under the heading `title`."""
    values = sorted({key(r) for r in rows}, key=str)
    table = [[value] + [sum(1 for r in rows if key(r) == value and r["label"] == c) for c in CLASS_NAMES]
             + [sum(1 for r in rows if key(r) == value)] for value in values]
    table.append(["total"] + [sum(1 for r in rows if r["label"] == c) for c in CLASS_NAMES] + [len(rows)])
    return f"## {title}\n\n" + _markdown_table([title.split()[-1]] + list(CLASS_NAMES) + ["total"], table)


def patients_table(rows, folds):
    """Markdown: patients, patient groups and images of the test set and of each of the `folds` folds."""
    partitions = ["test"] + [f"fold {k}" for k in range(1, folds + 1)]
    patients = [[p, len({r["patient_id"] for r in rows if _partition(r) == p}),
                 len({r["group_id"] for r in rows if _partition(r) == p}),
                 sum(1 for r in rows if _partition(r) == p)] for p in partitions]
    return "## Patients per partition\n\n" + _markdown_table(["partition", "patients", "groups", "images"], patients)


def _warnings_and_rejections(rows, rejected):
    """The sections after the links: images without a patient id, rejections by reason, the source caveat."""
    parts = []
    own_patient = sum(1 for r in rows if r["patient_id"].startswith("image:"))
    reasons = collections.Counter("duplicate (same sha256)" if r["reason"].startswith("duplicate (same sha256)")
                                  else r["reason"].split(" [")[0].split(":")[0] for r in rejected)
    if own_patient:
        parts.append(f"Warning: {own_patient} images had no patient id and count as their own patient; "
                     "patient leakage cannot be ruled out for them.")
    if reasons:
        parts.append("## Rejections\n\n" + _markdown_table(["reason", "inputs"], sorted(reasons.items())))
    sources = {r["source"] for r in rows}
    if len(sources) > 1:
        parts.append("Caveat: sources differ in population (the COVID collection is mostly adult films, the "
                     "Kaggle pneumonia set paediatric); a classifier can separate classes by source cues.")
    return parts


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
    parts = [
        "# Dataset statistics",
        f"{len(rows)} images from {len({r['patient_id'] for r in rows})} patients kept; "
        f"{len(rejected)} inputs rejected "
        f"(see rejected.csv). Split: "
        + (f"external validation, test set = every film of source(s) {', '.join(test_sources)}" if test_sources
           else f"test share {test_size}") + f", {folds} folds, seed {seed}, grouped by patient group "
        f"({len({r['group_id'] for r in rows})} groups: patient ids linked by shared films) and stratified by label.",
        count_table(rows, lambda r: r["source"], "Images per source"),
        count_table(rows, lambda r: r["view"], "Images per view"),
        confound_table(rows),
        count_table(rows, _partition, "Images per partition"),
        patients_table(rows, folds),
        _links_section(rows, links, max_distance, min_correlation),
    ]
    conflicts = _conflicts_section(links)
    if conflicts:
        parts.append(conflicts)
    parts += _warnings_and_rejections(rows, rejected)
    versions = library_versions()
    parts.append("## Library versions\n\nThe split and the metrics depend on these releases (setup.cfg pins the "
                 "compatible range):\n\n" + _markdown_table(["library", "version"], sorted(versions.items())))
    return "\n\n".join(parts) + "\n"
