"""Reader rules for the COVID collection, the Kaggle set and generic folders."""

import csv

import pytest

from tfflannel.data.sources import DatasetError, map_ccx_finding, read_ccx, read_folder, read_kcx

from .builders import build_ccx, build_kcx


@pytest.mark.parametrize("finding, label", [
    ("COVID-19", "covid19"),
    ("COVID-19, ARDS", "covid19"),
    ("Pneumonia/Viral/COVID-19", "covid19"),
    ("SARS", "viral_pneumonia"),
    ("Pneumonia/Viral/SARS", "viral_pneumonia"),
    ("MERS-CoV", "viral_pneumonia"),
    ("Influenza", "viral_pneumonia"),
    ("Varicella", "viral_pneumonia"),
    ("Herpes", "viral_pneumonia"),
    ("Pneumonia/Viral/Influenza", "viral_pneumonia"),
    ("Streptococcus", "bacterial_pneumonia"),
    ("Klebsiella", "bacterial_pneumonia"),
    ("Legionella", "bacterial_pneumonia"),
    ("Mycoplasma Bacterial Pneumonia", "bacterial_pneumonia"),
    ("Chlamydophila", "bacterial_pneumonia"),
    ("E.Coli", "bacterial_pneumonia"),
    ("Staphylococcus", "bacterial_pneumonia"),
    ("Nocardia", "bacterial_pneumonia"),
    ("Pneumonia/Bacterial/Streptococcus", "bacterial_pneumonia"),
    ("Pneumonia/Bacterial/Mycoplasma", "bacterial_pneumonia"),
    ("No Finding", "normal"),
])
def test_finding_map_old_and_new_forms(finding, label):
    assert map_ccx_finding(finding) == (label, "")


@pytest.mark.parametrize("finding", ["Pneumocystis", "Pneumonia/Fungal/Pneumocystis"])
def test_fungal_excluded_by_default_and_bacterial_on_switch(finding):
    label, reason = map_ccx_finding(finding)
    assert label is None and "fungal" in reason
    assert map_ccx_finding(finding, fungal_as_bacterial=True)[0] == "bacterial_pneumonia"


@pytest.mark.parametrize("finding", ["ARDS", "Tuberculosis", "Pneumonia", "Pneumonia/Lipoid", "todo", ""])
def test_unknown_findings_rejected_with_reason(finding):
    label, reason = map_ccx_finding(finding)
    assert label is None and reason


def test_ccx_reader_on_real_images(tmp_path):
    extra = [
        {"patientid": "900", "finding": "COVID-19", "view": "L", "modality": "X-ray", "filename": "lateral.png"},
        {"patientid": "901", "finding": "COVID-19", "view": "Axial", "modality": "CT", "filename": "ct.png"},
        {"patientid": "902", "finding": "ARDS", "view": "PA", "modality": "X-ray", "filename": "ards.png"},
        {"patientid": "903", "finding": "Pneumonia/Viral/COVID-19", "view": "AP Supine", "modality": "X-ray",
         "filename": "supine.png"},
        {"patientid": "904", "finding": "Pneumonia/Fungal/Pneumocystis", "view": "PA", "modality": "X-ray",
         "filename": "pcp.png"},
        {"patientid": "905", "finding": "COVID-19", "view": "PA", "modality": "X-ray", "filename": "absent.jpg"},
    ]
    root = build_ccx(tmp_path / "ccx", extra_rows=extra)
    (root / "images" / "absent.jpg").unlink()
    records, rejected = read_ccx(root)
    by_name = {r["path"].rsplit("/", 1)[1]: r for r in records}
    assert len(records) == 19 + 1
    assert by_name["supine.png"]["label"] == "covid19" and by_name["supine.png"]["view"] == "AP Supine"
    assert {r["label"] for r in records} == {"covid19", "viral_pneumonia", "bacterial_pneumonia", "normal"}
    assert all(r["patient_id"].startswith("ccx:") and r["source"] == "ccx" for r in records)
    reasons = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in rejected}
    assert "not frontal" in reasons["lateral.png"]
    assert "not X-ray" in reasons["ct.png"]
    assert "none of" in reasons["ards.png"]
    assert "fungal" in reasons["pcp.png"]
    assert "missing" in reasons["absent.jpg"]
    assert all("metadata.csv line" in r["reason"] for r in rejected)
    records, _ = read_ccx(root, fungal_as_bacterial=True)
    assert any(r["path"].endswith("pcp.png") and r["label"] == "bacterial_pneumonia" for r in records)


def test_ccx_reader_accepts_capitalised_old_header(tmp_path):
    root = build_ccx(tmp_path / "ccx")
    text = (root / "metadata.csv").read_text().replace("patientid", "Patientid", 1)
    (root / "metadata.csv").write_text(text)
    assert len(read_ccx(root)[0]) == 19


def test_ccx_errors_name_file_and_problem(tmp_path):
    with pytest.raises(DatasetError, match="metadata.csv not found"):
        read_ccx(tmp_path)
    (tmp_path / "metadata.csv").write_text("patientid,finding,filename\n1,COVID-19,a.png\n")
    with pytest.raises(DatasetError, match=r"missing required column.*view"):
        read_ccx(tmp_path)


def test_kcx_reader_rules(tmp_path):
    root = build_kcx(tmp_path / "kcx")
    (root / "train" / "NORMAL" / ".DS_Store").write_text("x")
    records, rejected = read_kcx(root)
    assert len(records) == 21
    for record in records:
        name = record["path"].rsplit("/", 1)[1]
        if name.startswith("IM-"):
            assert record["label"] == "normal" and record["patient_id"] == "kcx:" + "-".join(name.split("-")[:2])
        elif "_bacteria_" in name:
            assert record["label"] == "bacterial_pneumonia" and record["patient_id"] == "kcx:" + name.split("_")[0]
        else:
            assert "_virus_" in name and record["label"] == "viral_pneumonia"
        assert record["view"] == "AP"
    assert {r["image_id"].split("/")[0] for r in records} == {"kcx:train", "kcx:val", "kcx:test"}
    assert [r["reason"] for r in rejected] == ["not an image file name"]


def test_kcx_normal2_series_and_empty_layout(tmp_path):
    root = build_kcx(tmp_path / "kcx")
    source = next((root / "train" / "NORMAL").glob("*.jpeg"))
    source.rename(source.with_name("NORMAL2-IM-1427-0001.jpeg"))
    records, _ = read_kcx(root)
    assert any(r["patient_id"] == "kcx:IM-1427" for r in records)
    with pytest.raises(DatasetError, match="no .*NORMAL"):
        read_kcx(tmp_path / "kcx" / "train")


def test_folder_reader_uses_patients_csv(sample_cls_dir):
    records, rejected = read_folder(sample_cls_dir)
    assert len(records) == 40 and not rejected
    with open(sample_cls_dir / "patients.csv") as handle:
        table = {r["filename"]: r for r in csv.DictReader(handle)}
    for record in records:
        relative = record["path"].split("/cls/")[1]
        assert record["patient_id"] == table[relative]["patient_id"]
        assert record["source"] == table[relative]["source"]


def test_folder_reader_rejects_unknown_label_and_empty(tmp_path):
    (tmp_path / "fungal").mkdir()
    (tmp_path / "fungal" / "a.png").write_bytes(b"x")
    _, rejected = read_folder(tmp_path)
    assert "not one of" in rejected[0]["reason"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty folder"):
        read_folder(empty)


def test_folder_without_patient_ids_warns_that_each_image_is_its_own_patient(tmp_path, sample_cls_dir, caplog):
    import shutil

    for label in ("covid19", "normal"):
        (tmp_path / label).mkdir()
        for path in sorted((sample_cls_dir / label).glob("*.png"))[:2]:
            shutil.copy(path, tmp_path / label / path.name)
    with caplog.at_level("WARNING", logger="tfflannel.data.sources"):
        records, _ = read_folder(tmp_path)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: 4 of 4 images have no patient id (no patients.csv): each is its own patient, so films of one "
        f"patient can land in different partitions (leakage); add DIR/patients.csv with columns "
        f"filename,patient_id[,source,view]"]
    assert sorted(r["patient_id"] for r in records) == sorted(f"image:{r['label']}/{r['path'].rsplit('/', 1)[1]}"
                                                             for r in records)
    listed = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*.png"))
    (tmp_path / "patients.csv").write_text("filename,patient_id\n" + "".join(f"{f},p{i}\n"
                                                                            for i, f in enumerate(listed[:3])))
    caplog.clear()
    with caplog.at_level("WARNING", logger="tfflannel.data.sources"):
        read_folder(tmp_path)
    assert len(caplog.records) == 1 and "1 of 4 images have no patient id (not listed in" in caplog.text
    (tmp_path / "patients.csv").write_text("filename,patient_id\n" + "".join(f"{f},p{i}\n"
                                                                            for i, f in enumerate(listed)))
    caplog.clear()
    with caplog.at_level("WARNING", logger="tfflannel.data.sources"):
        read_folder(tmp_path)
    assert not caplog.records, "every image has a patient id: no warning"
    assert not [r for r in read_folder(sample_cls_dir)[0] if r["patient_id"].startswith("image:")]
