"""prepare-data end to end: grouping, stratification, determinism, duplicates, atomic output, errors."""

import csv
import itertools
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from tfflannel.cli import main
from tfflannel.data import manifest as manifest_module
from tfflannel.data.manifest import MANIFEST_COLUMNS, load_manifest, prepare_manifest
from tfflannel.data.split import assign_splits

from .builders import build_ccx, build_kcx


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _partitions(rows):
    parts = {}
    for row in rows:
        key = "test" if row["split"] == "test" else f"fold{row['fold']}"
        parts.setdefault(key, set()).add(row["patient_id"])
    return parts


def _assert_no_patient_in_two_partitions(rows):
    parts = _partitions(rows)
    for (name_a, a), (name_b, b) in itertools.combinations(parts.items(), 2):
        assert not (a & b), f"patients {sorted(a & b)} in both {name_a} and {name_b}"


@pytest.fixture
def ccx_kcx(tmp_path):
    return build_ccx(tmp_path / "ccx"), build_kcx(tmp_path / "kcx")


def test_cli_ccx_plus_kcx_end_to_end(tmp_path, ccx_kcx):
    ccx, kcx = ccx_kcx
    out = tmp_path / "work"
    result = CliRunner().invoke(main, ["prepare-data", "--ccx", str(ccx), "--kcx", str(kcx), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = _rows(out / "manifest.csv")
    assert list(rows[0]) == list(MANIFEST_COLUMNS)
    assert len(rows) == 40
    assert {r["source"] for r in rows} == {"ccx", "kcx"}
    assert len({r["image_id"] for r in rows}) == 40
    assert all(os.path.isabs(r["path"]) and os.path.isfile(r["path"]) for r in rows)
    assert all(len(r["sha256"]) == 64 for r in rows)
    assert all((r["split"] == "test") == (r["fold"] == "") for r in rows)
    assert {r["fold"] for r in rows if r["split"] == "train"} == {"1", "2", "3", "4", "5"}
    _assert_no_patient_in_two_partitions(rows)
    stats = (out / "statistics.md").read_text()
    assert "| ccx | 10 | 3 | 3 | 3 | 19 |" in stats and "Patients per partition" in stats
    assert "RESEARCH USE ONLY" in result.output


def test_sample_flag_groups_multi_image_patients(tmp_path, sample_cls_dir):
    rows = prepare_manifest(tmp_path, folders=[str(sample_cls_dir)], progress=False)
    _assert_no_patient_in_two_partitions(rows)
    multi = [p for p in {r["patient_id"] for r in rows} if sum(r["patient_id"] == p for r in rows) > 1]
    assert multi, "the sample should contain patients with several images"


def test_same_seed_byte_identical_other_seed_differs(tmp_path, sample_cls_dir):
    runner = CliRunner()
    outputs = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "7")):
        result = runner.invoke(main, ["prepare-data", "--sample", "--out", str(tmp_path / name), "--seed", seed])
        assert result.exit_code == 0, result.output
        outputs.append((tmp_path / name / "manifest.csv").read_bytes())
    assert outputs[0] == outputs[1]
    assert outputs[0] != outputs[2]


def test_stratified_grouped_split_on_synthetic_patients():
    rng = np.random.default_rng(3)
    labels, groups = [], []
    for patient in range(400):
        label = ["covid19", "viral_pneumonia", "bacterial_pneumonia", "normal"][rng.integers(4)]
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            labels.append(label)
            groups.append(f"p{patient}")
    labels, groups = np.array(labels), np.array(groups)
    split, fold = assign_splits(labels, groups, test_size=0.2, folds=5, seed=0)
    parts = [split == "test"] + [fold == k for k in range(1, 6)]
    for a, b in itertools.combinations(parts, 2):
        assert not set(groups[a]) & set(groups[b])
    assert abs((split == "test").mean() - 0.2) < 0.03
    for mask in parts:
        for label in set(labels):
            expected = mask.sum() * np.mean(labels == label)
            assert abs((labels[mask] == label).sum() - expected) <= 2, (label, expected)


def test_test_set_does_not_depend_on_fold_count():
    labels = np.array([str(i % 4) for i in range(200)])
    groups = np.array([f"p{i // 2}" for i in range(200)])
    a = assign_splits(labels, groups, folds=5, seed=1)[0]
    b = assign_splits(labels, groups, folds=3, seed=1)[0]
    np.testing.assert_array_equal(a, b)


def test_too_few_patients_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        assign_splits(["a"] * 4, ["p1", "p2", "p3", "p4"], folds=5)


def test_duplicates_kept_once_and_conflicts_excluded(tmp_path, sample_cls_dir):
    data = tmp_path / "data"
    shutil.copytree(sample_cls_dir, data)
    normal = sorted((data / "normal").glob("kermany__*.png"))
    shutil.copyfile(normal[0], data / "normal" / "copy_of_first.png")          # same label: kept once
    shutil.copyfile(normal[1], data / "covid19" / "conflicting.png")           # other label: both excluded
    rows = prepare_manifest(tmp_path / "work", folders=[data], progress=False)
    rejected = _rows(tmp_path / "work" / "rejected.csv")
    reasons = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in rejected}
    duplicate_reasons = [reasons.get("copy_of_first.png", ""), reasons.get(normal[0].name, "")]
    assert sum("duplicate" in reason for reason in duplicate_reasons) == 1
    assert "conflicting labels" in reasons["conflicting.png"] and "conflicting labels" in reasons[normal[1].name]
    assert len(rows) == 40 - 1
    assert len({r["sha256"] for r in rows}) == len(rows)


def test_unreadable_image_rejected_and_run_goes_on(tmp_path, sample_cls_dir):
    data = tmp_path / "data"
    shutil.copytree(sample_cls_dir, data)
    path = data / "normal" / "broken.png"
    good = next((data / "normal").glob("*.png")).read_bytes()
    path.write_bytes(good[:200])
    rows = prepare_manifest(tmp_path / "work", folders=[data], progress=False)
    assert len(rows) == 40
    rejected = _rows(tmp_path / "work" / "rejected.csv")
    assert [r["path"] for r in rejected] == [str(path)]
    assert "unreadable" in rejected[0]["reason"]


def test_interrupted_write_keeps_previous_manifest(tmp_path, sample_cls_dir, monkeypatch):
    out = tmp_path / "work"
    prepare_manifest(out, folders=[sample_cls_dir], progress=False)
    before = (out / "manifest.csv").read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    original = manifest_module.write_csv_atomic

    def failing_writer(path, rows, fields):
        if str(path).endswith("manifest.csv"):
            def rows_then_crash():
                yield rows[0]
                explode()
            return original(path, rows_then_crash(), fields)
        return original(path, rows, fields)

    monkeypatch.setattr(manifest_module, "write_csv_atomic", failing_writer)
    with pytest.raises(KeyboardInterrupt):
        prepare_manifest(out, folders=[sample_cls_dir], seed=5, progress=False)
    assert (out / "manifest.csv").read_bytes() == before
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")], "temporary files must be cleaned up"


@pytest.mark.parametrize("case", ["missing_metadata", "missing_column", "empty_dir", "nothing_left", "no_source"])
def test_bad_input_exit_code_2_with_clear_message(tmp_path, case):
    args = ["prepare-data", "--out", str(tmp_path / "work")]
    if case == "missing_metadata":
        (tmp_path / "ccx").mkdir()
        args += ["--ccx", str(tmp_path / "ccx")]
        expected = "metadata.csv not found"
    elif case == "missing_column":
        (tmp_path / "ccx").mkdir()
        (tmp_path / "ccx" / "metadata.csv").write_text("patientid,view,filename\n")
        args += ["--ccx", str(tmp_path / "ccx")]
        expected = "missing required column"
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        args += ["--folder", str(tmp_path / "empty")]
        expected = "empty folder"
    elif case == "nothing_left":
        build_ccx(tmp_path / "ccx", edit_rows=lambda row: dict(row, view="L"))
        args += ["--ccx", str(tmp_path / "ccx")]
        expected = "no images left"
    else:
        expected = "no data source"
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert not (tmp_path / "work" / "manifest.csv").exists()


def test_load_manifest_checks_labels(tmp_path, sample_cls_dir):
    prepare_manifest(tmp_path, folders=[sample_cls_dir], progress=False)
    assert len(load_manifest(tmp_path)) == 40
    text = (tmp_path / "manifest.csv").read_text().replace(",normal,", ",fungal,", 1)
    (tmp_path / "manifest.csv").write_text(text)
    with pytest.raises(ValueError, match="row .*'fungal'"):
        load_manifest(tmp_path)


def test_real_shared_classification_set(tmp_path, shared_dir):
    """The 334-image development set: patients never cross partitions, classes stay balanced."""
    source = shared_dir / "data" / "cxr-cls"
    data = tmp_path / "cls"
    rows = list(csv.DictReader(open(source / "labels.csv")))
    with open(data.mkdir() or data / "patients.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "patient_id", "source", "view"])
        for row in rows:
            name = row["filename"].split("/")[-1]
            (data / row["label"]).mkdir(exist_ok=True)
            os.symlink(source / row["filename"], data / row["label"] / name)
            writer.writerow([f"{row['label']}/{name}", row["group_id"], row["source"], row["view"][:2]])
    manifest = prepare_manifest(tmp_path / "work", folders=[data], progress=False)
    assert len(manifest) == 334
    _assert_no_patient_in_two_partitions(manifest)
    test_share = np.mean([r["split"] == "test" for r in manifest])
    assert 0.17 < test_share < 0.23
