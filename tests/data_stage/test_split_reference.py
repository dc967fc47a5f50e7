"""The split of the bundled sample with the demo's settings, against a stored assignment.

The split is a function of the manifest and the seed, and also of the scikit-learn release: with
these settings StratifiedGroupKFold gives test/fold sizes 8/10/11/11 under scikit-learn 1.6.1 and
10/11/10/9 under 1.9.1. setup.cfg pins the range; this test notices a change inside or outside it.
It compares integers (each image's partition, fold and group), which do not depend on the CPU: the
sample's closest near-identical candidate pair correlates 0.89, far below the 0.97 linking threshold, so
a last-bit difference in the thumbnails cannot link or unlink films. No test stores a floating-point
score: those differ between CPUs (docs/reproducibility.md).
If a change is intended, regenerate the reference and say so in the CHANGELOG:

    PYTHONPATH=. python tests/data_stage/test_split_reference.py
"""

import csv
import sys
from pathlib import Path

REFERENCE = Path(__file__).with_name("sample_split_demo.csv")
COLUMNS = ("image_id", "group_id", "split", "fold")
REPO = Path(__file__).resolve().parents[2]


def _demo_settings():
    from tfflannel.config import load_config

    data = load_config(REPO / "configs" / "demo.yaml").data
    return {"seed": data.seed, "folds": data.folds, "test_size": data.test_size,
            "max_distance": data.link_max_distance, "min_correlation": data.link_min_correlation}


def _split_sample(out):
    from tfflannel.data.manifest import prepare_manifest
    from tfflannel.sample import CLS_DIR

    rows = prepare_manifest(out, folders=[CLS_DIR], progress=False, **_demo_settings())
    return [{key: row[key] for key in COLUMNS} for row in rows]


def test_demo_settings_are_those_of_the_reference():
    assert _demo_settings() == {"seed": 0, "folds": 3, "test_size": 0.25, "max_distance": 8, "min_correlation": 0.97}


def test_sample_split_matches_stored_assignment(tmp_path):
    import sklearn

    found = _split_sample(tmp_path)
    with open(REFERENCE, newline="") as handle:
        expected = list(csv.DictReader(handle))
    sizes = {}
    for row in found:
        key = "test" if row["split"] == "test" else f"fold {row['fold']}"
        sizes[key] = sizes.get(key, 0) + 1
    assert found == expected, (
        f"the bundled sample's split differs from {REFERENCE.name} (scikit-learn {sklearn.__version__}; sizes now "
        f"{dict(sorted(sizes.items()))}, reference test 10 / folds 11, 10, 9). A library release or a change to the "
        "split or the linking moved images between partitions; if intended, regenerate (see this file's docstring).")


if __name__ == "__main__":
    import tempfile

    from tfflannel.utils import write_csv_atomic

    with tempfile.TemporaryDirectory() as tmp:
        write_csv_atomic(REFERENCE, _split_sample(tmp), COLUMNS)
    print(f"wrote {REFERENCE}", file=sys.stderr)
