"""Patient linking through identical and near-identical films: oracles for the pieces, real films end to end."""

import csv
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from tfflannel.data.io import read_image
from tfflannel.data.linkage import (
    Link,
    fingerprint_image,
    group_patients,
    hamming_candidates,
    near_identical_pairs,
    thumbnail_correlation,
)
from tfflannel.data.manifest import load_manifest, prepare_manifest

from .builders import build_ccx

DEMO_SPLIT = {"folds": 3, "test_size": 0.25}
LOOK_ALIKE = ("viral_pneumonia/kermany__person1524_virus_2658.png", "viral_pneumonia/kermany__person494_virus_1000.png")


def _jpeg(image, scale, quality):
    """A resized, JPEG-recompressed copy of a uint8 (H, W) film, decoded back."""
    picture = Image.fromarray(image)
    picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _shifted(image, fraction, quality=85):
    """A copy cropped by `fraction` of each side at the top left and resized back (a slight shift), as JPEG."""
    picture = Image.fromarray(image)
    dx, dy = max(1, round(picture.width * fraction)), max(1, round(picture.height * fraction))
    picture = picture.crop((dx, dy, picture.width, picture.height)).resize(picture.size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("L"))


def test_dhash_and_thumbnail_match_block_means():
    """On a 576x512 film of 8x9 flat blocks, dHash and thumbnail follow from NumPy block means alone."""
    rng = np.random.default_rng(0)
    levels = rng.integers(20, 236, (8, 9))
    while np.abs(np.diff(levels, axis=1)).min() < 3:      # neighbours differ clearly: rounding cannot flip a bit
        levels = rng.integers(20, 236, (8, 9))
    checker = 10 * (-1) ** np.add.outer(np.arange(512), np.arange(576))     # sums to 0 over every 64x64 block
    image = (np.kron(levels, np.ones((64, 64), int)) + checker).astype(np.uint8)
    dhash, thumbnail = fingerprint_image(image)
    blocks = image.reshape(8, 64, 9, 64).mean(axis=(1, 3))
    np.testing.assert_array_equal(blocks, levels)                            # exact, so no rounding ties
    bits = (blocks[:, 1:] > blocks[:, :-1]).ravel()
    assert dhash == int("".join("1" if b else "0" for b in bits), 2)
    np.testing.assert_allclose(thumbnail, image.reshape(64, 8, 64, 9).mean(axis=(1, 3)), atol=1.0)  # two rounded passes


def test_hamming_candidates_equal_brute_force():
    rng = np.random.default_rng(1)
    hashes = [int(h) for h in rng.integers(0, 2**64 - 1, 300, dtype=np.uint64, endpoint=True)]
    for k in range(0, 300, 7):                   # plant near pairs
        hashes[k + 1] = hashes[k] ^ sum(1 << int(b) for b in rng.choice(64, rng.integers(0, 10), replace=False))
    i, j, distance = hamming_candidates(hashes, 8, chunk=37)
    brute = [(a, b, bin(hashes[a] ^ hashes[b]).count("1")) for a in range(300) for b in range(a + 1, 300)]
    assert list(zip(i.tolist(), j.tolist(), distance.tolist(), strict=True)) == [t for t in brute if t[2] <= 8]
    assert len(i) >= 30


def test_thumbnail_correlation_equals_corrcoef():
    rng = np.random.default_rng(2)
    thumbnails = rng.integers(0, 256, (6, 64, 64), dtype=np.uint8)
    thumbnails[3] = 7                             # constant: correlation defined as 0
    i, j = np.array([0, 1, 2, 0, 4]), np.array([1, 2, 5, 3, 5])
    found = thumbnail_correlation(thumbnails, i, j, chunk=2)
    expected = [np.corrcoef(thumbnails[a].ravel(), thumbnails[b].ravel())[0, 1] if b != 3 else 0.0
                for a, b in zip(i, j, strict=True)]
    np.testing.assert_allclose(found, expected, atol=1e-5)


def test_group_patients_is_union_find_over_chains():
    links = [Link("identical", "x", "y", "p2", "p9", "a", "a", 0, 1.0),
             Link("near-identical", "y", "z", "p9", "p4", "a", "b", 3, 0.99)]
    groups = group_patients(["p4", "p2", "p9", "p7", "p8"], links)
    assert groups == {"p2": "p2", "p4": "p2", "p9": "p2", "p7": "p7", "p8": "p8"}


def _sample_with_copies(sample_cls_dir, root):
    """The bundled sample plus an identical copy, a resized JPEG copy and a relabelled near-copy, each a new patient."""
    shutil.copytree(sample_cls_dir, root)
    shutil.copyfile(root / "bacterial_pneumonia/ieee8023__000001.png", root / "bacterial_pneumonia/zz_identical.png")
    film = read_image(root / "viral_pneumonia/ieee8023__000005-3.png")[0]
    (root / "viral_pneumonia/zz_resized.jpg").write_bytes(_jpeg(film, 0.6, 70))
    film = read_image(root / "normal/kermany__IM-0467-0001.png")[0]
    (root / "covid19/zz_relabelled.jpg").write_bytes(_jpeg(film, 1.3, 85))
    table = list(csv.reader(open(root / "patients.csv", newline="")))
    for row in table:                              # the identical copy's new patient also owns another film
        if row[0] == "bacterial_pneumonia/kermany__person83_bacteria_407.png":
            row[1:3] = ["web:identical", "web"]
    table += [["bacterial_pneumonia/zz_identical.png", "web:identical", "web", "PA"],
              ["viral_pneumonia/zz_resized.jpg", "other:resized", "other", "AP"],
              ["covid19/zz_relabelled.jpg", "other:relabelled", "other", "AP"]]
    with open(root / "patients.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(table)
    return root


def _partition(row):
    return "test" if row["split"] == "test" else f"fold {row['fold']}"


def test_copies_link_patients_and_share_a_partition_for_every_seed(tmp_path, sample_cls_dir):
    data = _sample_with_copies(sample_cls_dir, tmp_path / "data")
    for seed in (0, 1, 2, 3):
        out = tmp_path / f"work{seed}"
        rows = prepare_manifest(out, folders=[data], seed=seed, progress=False, **DEMO_SPLIT)
        by_patient = {}
        for row in rows:
            by_patient.setdefault(row["patient_id"], []).append(row)
        identical = by_patient["ccx:282"] + by_patient["web:identical"]          # 3 ccx films + person83's film
        resized = by_patient["ccx:277"] + by_patient["other:resized"]
        relabelled = by_patient["kcx:IM-0467"] + by_patient["other:relabelled"]
        for linked in (identical, resized, relabelled):
            assert len({r["group_id"] for r in linked}) == 1, [(r["image_id"], r["group_id"]) for r in linked]
            assert len({_partition(r) for r in linked}) == 1, [(r["image_id"], _partition(r)) for r in linked]
        assert len(identical) == 4 and len(resized) == 4 and len(relabelled) == 2
        # Every group sits in exactly one partition.
        partitions = {}
        for row in rows:
            partitions.setdefault(row["group_id"], set()).add(_partition(row))
        assert all(len(p) == 1 for p in partitions.values())
        # The look-alike pair stays apart.
        names = {row["path"].split("/data/", 1)[1]: row for row in rows}
        assert names[LOOK_ALIKE[0]]["group_id"] != names[LOOK_ALIKE[1]]["group_id"]
    rejected = list(csv.DictReader(open(out / "rejected.csv", newline="")))
    assert [(r["path"].rsplit("/", 1)[1], r["reason"]) for r in rejected] == [
        ("zz_identical.png", "duplicate (same sha256) of ccx:bacterial_pneumonia/ieee8023__000001")]
    stats = (out / "statistics.md").read_text()
    assert ("| identical | ccx:282 | web:identical | ccx:bacterial_pneumonia/ieee8023__000001 | "
            "web:bacterial_pneumonia/zz_identical | 0 | 1.0000 |") in stats
    assert "| near-identical | ccx:277 | other:resized | ccx:viral_pneumonia/ieee8023__000005-3 | " in stats
    assert "| near-identical | kcx:IM-0467 | other:relabelled |" in stats
    assert "## Films linked to two labels" in stats
    conflict = [line for line in stats.splitlines() if "other:covid19/zz_relabelled" in line and "| normal |" in line]
    assert conflict and "| covid19 |" in conflict[-1]
    assert "3 links join different patient ids; the largest group, ccx:277, holds 2 patient ids" in stats
    assert "| scikit-learn | " in stats and "| numpy | " in stats


def test_collection_layout_one_film_under_two_patients(tmp_path, sample_cls_dir):
    """The collection's two known cases, rebuilt on real films: a file listed under two patient ids
    (`000001-27.jpg`: patients 287 and 340) and one film under two names and ids (patients 97 and 178)."""
    row = {"view": "PA", "modality": "X-ray"}
    extra = [dict(row, patientid="340", finding="Mycoplasma Bacterial Pneumonia", filename="000001.jpg"),
             dict(row, patientid="340", finding="Mycoplasma Bacterial Pneumonia", filename="340-other.png"),
             dict(row, patientid="178", finding="No Finding", filename="16660_5_1.jpg"),
             dict(row, patientid="178", finding="No Finding", filename="178-other.png")]
    root = build_ccx(tmp_path / "ccx", extra_rows=extra)
    shutil.copyfile(root / "images" / "f6575117.jpg", root / "images" / "16660_5_1.jpg")     # one of patient 228's
    shutil.copyfile(sample_cls_dir / "bacterial_pneumonia/kermany__person83_bacteria_407.png",
                    root / "images" / "340-other.png")                                        # films of their own
    shutil.copyfile(sample_cls_dir / "normal/kermany__IM-0231-0001.png", root / "images" / "178-other.png")
    for seed in (0, 1, 2, 3):
        out = tmp_path / f"work{seed}"
        rows = prepare_manifest(out, ccx=root, seed=seed, progress=False, **DEMO_SPLIT)
        for pair in (("ccx:282", "ccx:340"), ("ccx:228", "ccx:178")):
            linked = [r for r in rows if r["patient_id"] in pair]
            assert {r["patient_id"] for r in linked} == set(pair)
            assert len({r["group_id"] for r in linked}) == 1, [(r["image_id"], r["group_id"]) for r in linked]
            assert len({_partition(r) for r in linked}) == 1, [(r["image_id"], _partition(r)) for r in linked]
    assert len(rows) == 19 + 2
    reasons = {r["path"].rsplit("/", 1)[1]: r["reason"] for r in csv.DictReader(open(out / "rejected.csv"))}
    assert reasons == {"000001.jpg": "listed again: ccx:000001 also under patient ccx:340 (kept under ccx:282; "
                                     "the patients are linked)",
                       "f6575117.jpg": "duplicate (same sha256) of ccx:16660_5_1"}
    stats = (out / "statistics.md").read_text()
    assert "| same file | ccx:282 | ccx:340 | ccx:000001 | ccx:000001 | 0 | 1.0000 |" in stats
    assert "| identical | ccx:178 | ccx:228 | ccx:16660_5_1 | ccx:f6575117 | 0 | 1.0000 |" in stats


def test_look_alike_passes_the_hash_filter_but_not_the_correlation(sample_cls_dir):
    """Two films of one class from two children: close dHashes, so only the thumbnail correlation keeps them apart."""
    prints = [fingerprint_image(read_image(sample_cls_dir / name)[0]) for name in LOOK_ALIKE]
    distance = bin(prints[0][0] ^ prints[1][0]).count("1")
    correlation = thumbnail_correlation(np.stack([p[1] for p in prints]), [0], [1])[0]
    assert distance <= 8 and correlation < 0.95, (distance, correlation)
    assert near_identical_pairs([p[0] for p in prints], np.stack([p[1] for p in prints])) == []


def _shared_fingerprints(shared_dir):
    source = shared_dir / "data" / "cxr-cls"
    rows = list(csv.DictReader(open(source / "labels.csv", newline="")))
    films = [read_image(source / row["filename"])[0] for row in rows]
    return rows, films, [fingerprint_image(film) for film in films]


def test_thresholds_separate_true_and_false_pairs_on_shared_set(shared_dir):
    """Every near-copy links to its original; no two distinct films of the 334 link (README quotes these numbers)."""
    rows, films, prints = _shared_fingerprints(shared_dir)
    hashes = np.array([p[0] for p in prints], np.uint64)
    thumbnails = np.stack([p[1] for p in prints])
    # False pairs: all 55,611 pairs of distinct films (near-duplicates were screened out of this set).
    i, j, distance = hamming_candidates(hashes, 64)
    correlation = thumbnail_correlation(thumbnails, i, j)
    candidates = distance <= 8
    false_max = float(correlation[candidates].max())
    assert not np.any(candidates & (correlation >= 0.97)), "two distinct films of the shared set would link"
    # True pairs: resized (x0.5-2) + JPEG (q60-95) copies, and copies shifted by 0.5 % + JPEG.
    rng = np.random.default_rng(0)
    measured = {"resized + JPEG": ([], []), "shifted 0.5 % + JPEG": ([], [])}
    for film, (dhash, thumbnail) in zip(films, prints, strict=True):
        copies = (read_image_bytes(_jpeg(film, rng.uniform(0.5, 2.0), int(rng.integers(60, 96)))),
                  _shifted(film, 0.005))
        for (distances, correlations), copy in zip(measured.values(), copies, strict=True):
            copy_hash, copy_thumbnail = fingerprint_image(copy)
            distances.append(bin(dhash ^ copy_hash).count("1"))
            correlations.append(thumbnail_correlation(np.stack([thumbnail, copy_thumbnail]), [0], [1])[0])
    for kind, (distances, correlations) in measured.items():
        print(f"true pairs {kind}: {len(distances)}, dHash distance max {max(distances)}, "
              f"correlation min {min(correlations):.4f}")
    print(f"false pairs: {len(i)}, {int(candidates.sum())} within 8 bits, min distance {int(distance.min())}, "
          f"correlation max {false_max:.4f}")
    true_distance = [d for distances, _ in measured.values() for d in distances]
    true_correlation = [c for _, correlations in measured.values() for c in correlations]
    assert max(true_distance) <= 8
    assert min(true_correlation) >= 0.97
    assert min(true_correlation) > false_max


def read_image_bytes(data):
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def test_bad_thresholds_and_old_manifests_are_clear_errors(tmp_path, sample_cls_dir):
    with pytest.raises(ValueError, match=r"data.link_max_distance must be in \[0, 64\] bits. Received: 65"):
        prepare_manifest(tmp_path, folders=[sample_cls_dir], max_distance=65, progress=False)
    with pytest.raises(ValueError, match=r"data.link_min_correlation must be in \(0, 1\]. Received: 0.0"):
        prepare_manifest(tmp_path, folders=[sample_cls_dir], min_correlation=0.0, progress=False)
    prepare_manifest(tmp_path, folders=[sample_cls_dir], progress=False)
    rows = list(csv.reader(open(tmp_path / "manifest.csv", newline="")))
    with open(tmp_path / "manifest.csv", "w", newline="") as handle:       # as written before group_id existed
        drop = rows[0].index("group_id")
        csv.writer(handle).writerows(row[:drop] + row[drop + 1:] for row in rows)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['group_id'\]; .*rerun `prepare-data`"):
        load_manifest(tmp_path)
