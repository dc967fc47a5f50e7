"""Torchvision parity: seeded weights imported through `import-weights` reproduce torchvision's logits.

The oracle is `tests/fixtures/parity/NAME.npz`, written once by `tools/make_parity_fixtures.py` with
torch + torchvision (input, logits, the state dict's (name, shape) list; no weights). Here the same
weights are regenerated with NumPy from the seed (`seeded_state_dict`), written as a safetensors file,
imported by the real code path, and the reference network's logits compared. No torch needed.
"""

from pathlib import Path

import keras
import numpy as np
import pytest

pytest.importorskip("safetensors", reason="safetensors is a runtime dependency (pip install safetensors)")

from tfflannel.models.weights_import import (  # noqa: E402
    build_reference_network,
    import_weights,
    importable_backbones,
    read_state_dict,
    seeded_state_dict,
    write_safetensors,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
TOLERANCE = 1e-4


def load_fixture(name):
    """(image uint8 (1, S, S, 3), torchvision logits (1, 1000), [(name, shape)], seed) of a parity fixture."""
    data = np.load(FIXTURES / f"{name}.npz")
    dims, shapes, start = data["dims"].tolist(), [], 0
    for ndim in data["ndims"].tolist():
        shapes.append(tuple(dims[start:start + ndim]))
        start += ndim
    return data["image"], data["logits"], list(zip(data["names"].tolist(), shapes, strict=True)), int(data["seed"])


def scaled(image):
    return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def seeded_file(name, tmp_path):
    """The fixture's seeded state dict as a safetensors file, plus the fixture."""
    image, logits, names_shapes, seed = load_fixture(name)
    path = tmp_path / f"{name}.safetensors"
    write_safetensors(seeded_state_dict(names_shapes, seed), path)
    return path, image, logits


def reference_logits(name, weights_file, size, **kwargs):
    model = build_reference_network(name, size, **kwargs)
    model.load_weights(str(weights_file))
    return model, np.asarray(model.predict_on_batch(_image_cache[name]))


_image_cache = {}


def check_parity(name, tmp_path, **kwargs):
    source, image, expected = seeded_file(name, tmp_path)
    out = tmp_path / f"{name}.weights.h5"
    notes = import_weights(name, source, out)
    _image_cache[name] = scaled(image)
    model, logits = reference_logits(name, out, image.shape[1], **kwargs)
    difference = float(np.max(np.abs(logits - expected)))
    assert difference <= TOLERANCE, f"{name}: max abs logit difference {difference:.2e} > {TOLERANCE}"
    return model, out, notes


def test_every_torchvision_layout_backbone_has_a_fixture():
    assert sorted(p.stem for p in FIXTURES.glob("*.npz")) == importable_backbones()


@pytest.mark.slow
def test_densenet161_parity_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from tfflannel.cli import main

    source, image, expected = seeded_file("densenet161", tmp_path)
    out = tmp_path / "densenet161.weights.h5"
    result = CliRunner().invoke(main, ["import-weights", "--backbone", "densenet161", "--from", str(source),
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = build_reference_network("densenet161", image.shape[1])
    model.load_weights(str(out))
    difference = float(np.max(np.abs(np.asarray(model.predict_on_batch(scaled(image))) - expected)))
    assert difference <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet152_tv", "vgg19_bn"])
def test_parity(name, tmp_path):
    check_parity(name, tmp_path)


@pytest.mark.slow
def test_inception_v3_tv_parity_skips_the_auxiliary_head_with_a_note(tmp_path):
    _, _, notes = check_parity("inception_v3_tv", tmp_path)
    assert any("AuxLogits" in note for note in notes)


@pytest.mark.slow
def test_resnext_parity_and_split_grouped_round_trip(tmp_path):
    split, out, _ = check_parity("resnext101_32x8d", tmp_path, impl="split")
    image = _image_cache["resnext101_32x8d"]
    grouped = build_reference_network("resnext101_32x8d", image.shape[1], impl="grouped")
    grouped.load_weights(str(out))
    np.testing.assert_allclose(np.asarray(grouped.predict_on_batch(image)),
                               np.asarray(split.predict_on_batch(image)), atol=1e-5)
    saved = tmp_path / "grouped.weights.h5"            # grouped -> split: the other direction
    grouped.save_weights(str(saved))
    again = build_reference_network("resnext101_32x8d", image.shape[1], impl="split")
    again.load_weights(str(saved))
    for a, b in zip(again.get_weights(), split.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
