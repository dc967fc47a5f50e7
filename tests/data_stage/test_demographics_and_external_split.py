"""Age, sex and age group in the manifest; the external-validation split (`--test-source`); the confound table."""

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from tfflannel.cli import main
from tfflannel.data.manifest import load_manifest, prepare_manifest
from tfflannel.data.sources import age_group_of, read_ccx, read_kcx
from tfflannel.data.split import assign_external_splits
from tfflannel.errors import InputError

from .builders import build_ccx, build_kcx


@pytest.fixture
def ccx_kcx(tmp_path):
    return build_ccx(tmp_path / "ccx"), build_kcx(tmp_path / "kcx")


@pytest.mark.parametrize("age, source, group", [("33.0", "ccx", "18-39"), ("17.9", "", "0-17"), ("40", "", "40-64"),
                                                ("65", "ccx", "65+"), ("", "kcx", "1-5"), ("", "ccx", ""),
                                                ("n/a", "", "")])
def test_age_group_of_bins_a_recorded_age_and_falls_back_to_the_documented_group(age, source, group):
    assert age_group_of(age, source) == group


def test_ccx_records_age_and_sex_kcx_only_its_documented_age_group(ccx_kcx):
    ccx, kcx = ccx_kcx
    records, _ = read_ccx(ccx)
    with open(ccx / "metadata.csv", newline="") as handle:
        metadata = {f"ccx:{row['filename'].rsplit('.', 1)[0]}": row for row in csv.DictReader(handle)}
    for record in records:
        row = metadata[record["image_id"]]
        assert record["sex"] == row["sex"]
        assert record["age"] == (f"{float(row['age']):g}" if row["age"] else "")
        assert record["age_group"] == age_group_of(row["age"])
    assert any(r["age"] for r in records) and any(not r["age"] for r in records)
    kaggle, _ = read_kcx(kcx)
    assert {(r["age"], r["sex"], r["age_group"]) for r in kaggle} == {("", "", "1-5")}   # never an invented age


def test_external_split_holds_out_every_film_of_the_source_and_folds_the_rest(tmp_path, ccx_kcx):
    ccx, kcx = ccx_kcx
    out = tmp_path / "work"
    result = CliRunner().invoke(main, ["prepare-data", "--ccx", str(ccx), "--kcx", str(kcx), "--out", str(out),
                                       "--test-source", "ccx", "--folds", "3"])
    assert result.exit_code == 0, result.output
    rows = load_manifest(out)
    assert {r["source"] for r in rows if r["split"] == "test"} == {"ccx"}
    assert all(r["split"] == "test" for r in rows if r["source"] == "ccx")
    assert {r["fold"] for r in rows if r["split"] == "train"} == {"1", "2", "3"}
    for group in {r["group_id"] for r in rows}:
        assert len({r["split"] + r["fold"] for r in rows if r["group_id"] == group}) == 1
    stats = (out / "statistics.md").read_text()
    assert "external validation, test set = every film of source(s) ccx" in stats
    assert "## Class x source x age group" in stats
    kcx_rows = [r for r in rows if r["source"] == "kcx"]
    counts = [sum(r["label"] == c for r in kcx_rows) for c in ("covid19", "viral_pneumonia", "bacterial_pneumonia",
                                                                  "normal")]
    assert f"| kcx | 1-5 | {' | '.join(map(str, counts))} | {len(kcx_rows)} |" in stats


def test_external_split_keeps_linked_groups_whole_and_refuses_an_absent_source(tmp_path, sample_cls_dir):
    labels = np.array(["a", "b"] * 10)
    groups = np.array([f"g{i // 2}" for i in range(20)])        # pairs of rows share a group
    external = np.zeros(20, bool)
    external[[0, 7]] = True                                     # one row of groups g0 and g3
    split, fold = assign_external_splits(labels, groups, external, folds=2, seed=0)
    assert set(np.flatnonzero(split == "test")) == {0, 1, 6, 7}
    assert set(fold[split == "train"]) == {1, 2} and set(fold[split == "test"]) == {0}
    with pytest.raises(InputError, match="no image of source"):
        prepare_manifest(tmp_path / "w", folders=[sample_cls_dir], test_sources=("nowhere",), progress=False)


def test_a_manifest_written_before_the_demographic_columns_still_loads(tmp_path, sample_cls_dir):
    prepare_manifest(tmp_path, folders=[sample_cls_dir], folds=3, test_size=0.25, progress=False)
    path = tmp_path / "manifest.csv"
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    old = [c for c in rows[0] if c not in ("age", "sex", "age_group")]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=old, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    loaded = load_manifest(tmp_path)
    assert len(loaded) == 40 and {r["age_group"] for r in loaded} == {""}
