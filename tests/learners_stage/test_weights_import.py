"""Torchvision parity: seeded weights imported through `import-weights` reproduce torchvision's logits.

The oracle is `tests/fixtures/parity/NAME.npz`, written once by `tools/make_parity_fixtures.py` with
torch + torchvision (input, logits, the state dict's (name, shape) list; no weights). Here the same
weights are regenerated with NumPy from the seed (`seeded_state_dict`), written as a safetensors file,
imported by the real code path, and the reference network's logits compared. No torch needed.
"""

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors", reason="safetensors is a runtime dependency (pip install safetensors)")

from tfflannel.models.state_dicts import (  # noqa: E402
    normalise_keys,
    read_state_dict,
    seeded_state_dict,
    write_safetensors,
)
from tfflannel.models.torch_layout import importable_backbones  # noqa: E402
from tfflannel.models.weights_import import (  # noqa: E402
    assign_state_dict,
    build_reference_network,
    import_weights,
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


def check_parity(name, tmp_path, **kwargs):
    """Import the seeded file, load it into the reference network, compare logits; returns (model, file, notes)."""
    source, image, expected = seeded_file(name, tmp_path)
    out = tmp_path / f"{name}.weights.h5"
    notes = import_weights(name, source, out)
    model = build_reference_network(name, image.shape[1], **kwargs)
    model.load_weights(str(out))
    difference = float(np.max(np.abs(np.asarray(model.predict_on_batch(scaled(image))) - expected)))
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
def test_resnet152_tv_parity(tmp_path):
    check_parity("resnet152_tv", tmp_path)


@pytest.mark.slow
def test_vgg19_bn_parity_with_torchvision_and_timm_names(tmp_path):
    model, _, _ = check_parity("vgg19_bn", tmp_path)
    state = read_state_dict(tmp_path / "vgg19_bn.safetensors")
    timm = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    timm["pre_logits.fc1.weight"] = state["classifier.0.weight"].reshape(4096, 512, 7, 7)   # timm: convs
    timm["pre_logits.fc1.bias"] = state["classifier.0.bias"]
    timm["pre_logits.fc2.weight"] = state["classifier.3.weight"].reshape(4096, 4096, 1, 1)
    timm["pre_logits.fc2.bias"] = state["classifier.3.bias"]
    timm["head.fc.weight"], timm["head.fc.bias"] = state["classifier.6.weight"], state["classifier.6.bias"]
    notes = assign_state_dict(model, "vgg19_bn", timm)     # the same mapping import_weights runs
    assert notes == []
    image, expected, _, _ = load_fixture("vgg19_bn")
    assert float(np.max(np.abs(np.asarray(model.predict_on_batch(scaled(image))) - expected))) <= TOLERANCE


@pytest.mark.slow
def test_inception_v3_tv_parity_skips_the_auxiliary_head_with_a_note(tmp_path):
    _, _, notes = check_parity("inception_v3_tv", tmp_path)
    assert any("AuxLogits" in note for note in notes)


@pytest.mark.slow
def test_resnext_parity_and_split_grouped_round_trip(tmp_path):
    split, out, _ = check_parity("resnext101_32x8d", tmp_path, impl="split")
    image = scaled(load_fixture("resnext101_32x8d")[0])
    grouped = build_reference_network("resnext101_32x8d", image.shape[1], impl="grouped")
    grouped.load_weights(str(out))
    np.testing.assert_allclose(np.asarray(grouped.predict_on_batch(image)),
                               np.asarray(split.predict_on_batch(image)), atol=1e-5)
    before = split.get_weights()
    split.set_weights([np.zeros_like(w) for w in before])
    saved = tmp_path / "grouped.weights.h5"            # grouped -> split: the other direction
    grouped.save_weights(str(saved))
    split.load_weights(str(saved))
    for a, b in zip(split.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_densenet_legacy_keys_and_data_parallel_prefix_are_renamed():
    state = normalise_keys({"module.features.denseblock1.denselayer2.norm.1.running_var": np.ones(2),
                            "features.denseblock3.denselayer10.conv.2.weight": np.ones((1, 1, 1, 1)),
                            "features.conv0.weight": np.ones(1)})
    assert sorted(state) == ["features.conv0.weight", "features.denseblock1.denselayer2.norm1.running_var",
                             "features.denseblock3.denselayer10.conv2.weight"]


def test_pth_without_torch_says_what_to_install(tmp_path):
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed here: the message for hosts without torch cannot be shown")
    import zipfile

    path = tmp_path / "densenet161.pth"
    with zipfile.ZipFile(path, "w") as archive:           # the shape of a torch.save file; its tensors are not read
        archive.writestr("densenet161/data.pkl", b"not read")
    with pytest.raises(ValueError, match=r"tfflannel\[torch\].*safetensors"):
        read_state_dict(path)


@pytest.mark.slow
def test_a_file_that_does_not_fit_is_refused_with_the_tensor_names(tmp_path):
    _, _, names_shapes, seed = load_fixture("densenet161")
    state = seeded_state_dict(names_shapes, seed)
    del state["features.denseblock2.denselayer3.conv1.weight"]
    state["features.extra.weight"] = np.zeros(3, np.float32)
    write_safetensors(state, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"1 missing tensors \[features.denseblock2.denselayer3.conv1.weight\], "
                                         r"1 unexpected tensors \[features.extra.weight\]"):
        import_weights("densenet161", tmp_path / "bad.safetensors", tmp_path / "bad.weights.h5")
    assert not (tmp_path / "bad.weights.h5").exists()
    with pytest.raises(ValueError, match="torchvision-layout backbones"):
        import_weights("mobilenet_v2", tmp_path / "bad.safetensors", tmp_path / "x.weights.h5")


@pytest.mark.slow
def test_classifier_takes_the_backbone_from_a_state_dict_or_an_imported_file(tmp_path):
    from tfflannel.models.classifier import build_classifier

    source, image, _ = seeded_file("densenet161", tmp_path)
    imported = tmp_path / "densenet161.weights.h5"
    import_weights("densenet161", source, imported)
    reference = build_reference_network("densenet161", 64)
    reference.load_weights(str(imported))
    for weights in (source, imported):
        model = build_classifier("densenet161", 64, weights=str(weights))
        for layer in reference.layers:
            if layer.weights and layer.name != "densenet161_classifier":
                for a, b in zip(model.get_layer(layer.name).get_weights(), layer.get_weights(), strict=True):
                    np.testing.assert_array_equal(a, b)
        assert model.get_layer("head_logits").kernel.shape == (2208, 4)      # a new 4-class head
    with pytest.raises(ValueError, match="not an import-weights file of 'vgg19_bn'"):
        from tfflannel.models.weights_import import load_backbone_weights

        load_backbone_weights(build_classifier("vgg19_bn", 64, head="gap"), "vgg19_bn", imported)
