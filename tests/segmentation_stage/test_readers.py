"""Segmentation data readers on real pairs and on generated JSRT/SCR and Montgomery folders."""

import csv

import numpy as np
import pytest
from PIL import Image

from tfflannel.segmentation.readers import load_pair, read_jsrt, read_montgomery, read_pairs, split_pairs


def test_generic_pairs_folder_with_patient_csv(sample_seg_dir):
    pairs = read_pairs(sample_seg_dir)
    assert len(pairs) == 20
    assert all(p.patient_id.startswith("ieee8023:") for p in pairs)
    image, labels = load_pair(pairs[0])
    assert image.shape == labels.shape and set(np.unique(labels)) == {0, 1}
    assert 0.1 < labels.mean() < 0.6


def test_generic_pairs_plain_folder_and_csv(tmp_path, sample_seg_dir):
    plain = tmp_path / "plain"
    for sub in ("images", "masks"):
        (plain / sub).mkdir(parents=True)
        for path in sorted((sample_seg_dir / sub).glob("*.png"))[:3]:
            (plain / sub / path.name).write_bytes(path.read_bytes())
    (plain / "images" / "notes.txt").write_text("not an image")
    assert len(read_pairs(plain)) == 3
    table = tmp_path / "list.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "patient_id"])
        for path in sorted((plain / "images").glob("*.png")):
            writer.writerow([f"plain/images/{path.name}", f"plain/masks/{path.name}", "p1"])
    pairs = read_pairs(table)
    assert len(pairs) == 3 and {p.patient_id for p in pairs} == {"p1"}
    (plain / "masks" / path.name).unlink()
    with pytest.raises(FileNotFoundError, match="mask missing"):
        read_pairs(plain)


def _write_gif(path, mask):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask * 255).astype(np.uint8)).convert("P").save(path)


def test_jsrt_raw_and_scr_gifs(tmp_path):
    jsrt, scr = tmp_path / "JSRT", tmp_path / "SCR"
    jsrt.mkdir()
    raw = np.full((2048, 2048), 3000, ">u2")
    raw[:, 1024:] = 1000                         # raw polarity is inverted: low value = bright
    raw.tofile(jsrt / "JPCLN001.IMG")
    (jsrt / "Thumbs.db").write_text("junk")       # non-image entries are ignored (the original crashed)
    (jsrt / "subdir").mkdir()
    heart = np.zeros((1024, 1024), np.uint8)
    heart[400:700, 450:650] = 1
    left = np.zeros((1024, 1024), np.uint8)
    left[200:800, 600:900] = 1
    right = np.zeros((1024, 1024), np.uint8)
    right[200:800, 100:400] = 1
    _write_gif(scr / "fold1" / "masks" / "heart" / "JPCLN001.gif", heart)
    _write_gif(scr / "fold1" / "masks" / "left lung" / "JPCLN001.gif", left)
    _write_gif(scr / "fold1" / "masks" / "right lung" / "JPCLN001.gif", right)
    pairs = read_jsrt(jsrt, scr)
    assert len(pairs) == 1
    image, labels = load_pair(pairs[0], "jsrt")
    assert image.shape == (2048, 2048) and image[0, 1500] > image[0, 10], "bone-bright after inversion"
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert labels[1200, 1250] == 1, "heart wins where it overlaps the left lung"
    _, lung = load_pair(pairs[0], "lung")
    assert set(np.unique(lung)) == {0, 1} and lung[1000, 500] == 1 and lung[1000, 1500] == 1 and lung[100, 100] == 0


def test_montgomery_left_right_union(tmp_path):
    for sub in ("CXR_png", "ManualMask/leftMask", "ManualMask/rightMask"):
        (tmp_path / sub).mkdir(parents=True)
    Image.fromarray(np.full((64, 80), 120, np.uint8)).save(tmp_path / "CXR_png" / "MCUCXR_0001_0.png")
    left = np.zeros((64, 80), np.uint8)
    left[10:50, 45:70] = 255
    right = np.zeros((64, 80), np.uint8)
    right[10:50, 10:35] = 255
    Image.fromarray(left).save(tmp_path / "ManualMask/leftMask/MCUCXR_0001_0.png")
    Image.fromarray(right).save(tmp_path / "ManualMask/rightMask/MCUCXR_0001_0.png")
    pairs = read_montgomery(tmp_path)
    _, lung = load_pair(pairs[0])
    assert lung.sum() == 2 * 40 * 25


def test_split_pairs_is_patient_disjoint_and_seeded(sample_seg_dir):
    pairs = read_pairs(sample_seg_dir)
    train, valid = split_pairs(pairs, 0.25, seed=3)
    assert not {p.patient_id for p in train} & {p.patient_id for p in valid}
    assert len(train) + len(valid) == len(pairs) and valid
    assert split_pairs(pairs, 0.25, seed=3)[1] == valid
