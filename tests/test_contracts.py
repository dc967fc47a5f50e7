"""The predictions' provenance and the segmenter descriptor: typed readers that keep the files already on disk valid.

Oracle: the bytes the code before the typed records wrote (`json.dumps(dict, indent=2) + "\\n"`) and the shipped
`tfflannel/weights/lung_segmenter.json`. No TensorFlow.
"""

import json
from pathlib import Path

import pytest

from tfflannel.errors import InputError
from tfflannel.provenance import PredictionIdentity, Provenance, provenance_path, read_provenance, write_provenance
from tfflannel.segmentation.descriptor import (
    DESCRIPTOR_FILE,
    SegmenterDescriptor,
    read_segmenter_descriptor,
    write_segmenter_descriptor,
)

SHIPPED = Path(__file__).resolve().parents[1] / "tfflannel" / "weights" / DESCRIPTOR_FILE

OLD_IDENTITY = {"model_sha256": "ab" * 32, "kind": "patch", "backbone": "mobilenet_v2", "fold": 1, "input_size": 64,
                "resize": None, "manifest_sha256": "cd" * 32, "cache_index_sha256": "ef" * 32, "k": 5, "seed": 0,
                "images_per_batch": 4}


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_provenance_written_by_the_old_code_reads_typed_and_rewrites_byte_identical(tmp_path):
    old_bytes = json.dumps({"identity": OLD_IDENTITY, "done": ["test", "valid"]}, indent=2) + "\n"
    path = _write(provenance_path(tmp_path / "old"), old_bytes)
    recorded = read_provenance(tmp_path / "old")
    assert recorded == Provenance(PredictionIdentity(**OLD_IDENTITY), ("test", "valid"))
    assert recorded.identity.k == 5 and recorded.identity.seed == 0 and recorded.identity.resize is None
    write_provenance(tmp_path / "new", recorded)
    assert provenance_path(tmp_path / "new").read_text() == old_bytes == path.read_text()


def test_provenance_absent_partial_or_older_keys(tmp_path):
    assert read_provenance(tmp_path) is None
    path = _write(provenance_path(tmp_path), '{"done": ["train", "valid"]}')
    assert read_provenance(tmp_path) == Provenance(None, ("train", "valid"))
    older = {key: value for key, value in OLD_IDENTITY.items() if key != "images_per_batch"}
    path.write_text(json.dumps({"identity": older, "done": []}))
    recorded = read_provenance(tmp_path)
    assert recorded.identity.images_per_batch is None and recorded.identity.k == 5 and recorded.done == ()
    assert recorded.identity != PredictionIdentity(**OLD_IDENTITY), "a key an older version lacked makes it stale"


@pytest.mark.parametrize("text, problem", [
    ("{half", "unreadable"),
    ("[1, 2]", "expected a mapping"),
    ('{"identity": {}, "done": [], "speed": 3}', "expected a mapping"),
    ('{"identity": {"k": 5, "patch_size": 3}, "done": []}', "unknown identity key"),
    ('{"identity": {"k": "5"}, "done": []}', "identity.k must be int"),
    ('{"identity": {"seed": true}, "done": []}', "identity.seed must be int"),
    ('{"identity": {"kind": 1}, "done": []}', "identity.kind must be str"),
    ('{"identity": [], "done": []}', "must be a mapping"),
    ('{"done": "train"}', "must be a list"),
])
def test_malformed_provenance_is_an_input_error_naming_the_file(tmp_path, text, problem):
    path = _write(provenance_path(tmp_path), text)
    with pytest.raises(InputError, match=problem) as caught:
        read_provenance(tmp_path)
    assert str(path) in str(caught.value)


def test_unreadable_provenance_counts_as_no_predictions_for_reproduce_and_as_none_for_serving(tmp_path):
    from tfflannel.job_runner import _predicted_roles
    from tfflannel.serving.checks import scored_with

    _write(provenance_path(tmp_path), '{"identity": {"k": "five"}, "done": ["test"]}')
    assert _predicted_roles(tmp_path) == set()
    with pytest.warns(UserWarning, match="provenance.json.*K and seed not checked"):
        assert scored_with(tmp_path) == {}


def test_shipped_descriptor_reads_typed_and_rewrites_byte_identical(tmp_path):
    descriptor = read_segmenter_descriptor(SHIPPED)
    assert (descriptor.preset, descriptor.input_size, descriptor.classes) == ("fcdn_small", 128, "lung")
    assert descriptor.flip_tta is True and descriptor.architecture == {}
    assert descriptor.weights_path(SHIPPED).is_file()
    write_segmenter_descriptor(tmp_path / DESCRIPTOR_FILE, descriptor)
    assert (tmp_path / DESCRIPTOR_FILE).read_bytes() == SHIPPED.read_bytes()


def test_minimal_descriptor_takes_the_defaults_and_writes_only_what_is_set(tmp_path):
    path = _write(tmp_path / "seg.json", '{"preset": "fcdn_small", "weights": "w.h5"}')
    descriptor = read_segmenter_descriptor(path)
    assert descriptor == SegmenterDescriptor(preset="fcdn_small", weights="w.h5")
    assert (descriptor.input_size, descriptor.classes, descriptor.flip_tta, descriptor.description) == (
        256, "lung", False, None)
    assert descriptor.weights_path(path) == tmp_path / "w.h5"
    assert descriptor.as_dict() == {"preset": "fcdn_small", "input_size": 256, "classes": "lung", "weights": "w.h5",
                                    "flip_tta": False}


@pytest.mark.parametrize("text, problem", [
    ("{half", "unreadable segmenter descriptor"),
    ('["fcdn_small"]', "JSON mapping"),
    ('{"weights": "w.h5"}', r"missing key\(s\) \['preset'\]"),
    ('{"preset": "fcdn_small", "weights": "w.h5", "size": 128}', r"unknown key\(s\) \['size'\]"),
    ('{"preset": "fcdn_small", "weights": "w.h5", "input_size": "128"}', "`input_size` must be int"),
    ('{"preset": "fcdn_small", "weights": "w.h5", "input_size": true}', "`input_size` must be int"),
    ('{"preset": "fcdn_small", "weights": "w.h5", "flip_tta": "yes"}', "`flip_tta` must be bool"),
    ('{"preset": null, "weights": "w.h5"}', "`preset` must be str"),
])
def test_wrong_shaped_descriptor_is_an_input_error_naming_the_file(tmp_path, text, problem):
    path = _write(tmp_path / "seg.json", text)
    with pytest.raises(InputError, match=problem) as caught:
        read_segmenter_descriptor(path)
    assert str(path) in str(caught.value)
    with pytest.raises(FileNotFoundError, match="no segmenter descriptor"):
        read_segmenter_descriptor(tmp_path / "absent.json")
