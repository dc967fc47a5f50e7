"""Backbone registry: reference parameter counts, config sanity, one forward pass for every backbone."""

import keras
import numpy as np
import pytest

from tfflannel.models.backbones import backbone_config, create_backbone, list_backbones
from tfflannel.models.classifier import build_classifier

TORCHVISION_PARAMS = {
    "densenet161": 28_681_000,
    "inception_v3_tv": 23_834_568,
    "resnet152_tv": 60_192_808,
    "resnext101_32x8d": 88_791_336,
    "vgg19_bn": 143_678_248,
}


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _reference_model(name):
    size = backbone_config(name).input_size
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, create_backbone(name, inputs, include_top=True))


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_hand_written_backbones_equal_torchvision_counts(name):
    assert _trainable(_reference_model(name)) == TORCHVISION_PARAMS[name] == backbone_config(name).reference_params


def test_inception_v3_equals_torchvision_plus_bn_scales():
    model = _reference_model("inception_v3")
    # Keras builds InceptionV3's BN without gamma (scale=False); torchvision has one gamma per BN channel.
    gammas = sum(layer.beta.shape[0] for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    assert _trainable(model) + gammas == 23_834_568


def test_resnet152_keras_count_is_stated():
    model = _reference_model("resnet152")
    # Keras' ResNet152 has biased convs (torchvision: 60,192,808 without); the README states this number.
    assert _trainable(model) == 60_268_520


@pytest.mark.parametrize("name", list_backbones())
def test_every_backbone_classifies_a_small_patch(name):
    size = 80 if name.startswith("inception_v3") else 64
    model = build_classifier(name, input_size=size, weights="none", head="gap")
    config = backbone_config(name)
    out = np.asarray(model(np.random.default_rng(0).random((2, size, size, 1), dtype=np.float32) * 255))
    assert out.shape == (2, 4)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)
    assert model.get_layer(config.last_conv).output.shape[-1] == config.feature_dim
    assert model.layers[1].name == "imagenet_scaling"
    assert not any(isinstance(layer, keras.Model) for layer in model.layers), "backbone built flat, not nested"
    momenta = {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta in ({0.9}, set())


NATIVE_SIZES = {"inception_v3": 299, "inception_v3_tv": 299, "efficientnet_b4": 380, "covidnet_cxr": 480}


def test_native_input_sizes():
    assert {n: backbone_config(n).input_size for n in list_backbones()} == {n: NATIVE_SIZES.get(n, 224)
                                                                           for n in list_backbones()}


def test_scratch_names_mirror_the_registry():
    from tfflannel.backbone_names import SCRATCH_BACKBONE_NAMES

    assert list(SCRATCH_BACKBONE_NAMES) == [n for n in list_backbones() if backbone_config(n).scratch]
    assert not any(backbone_config(n).keras_weights for n in SCRATCH_BACKBONE_NAMES)


def test_efficientnet_b4_equals_torchvision_count():
    # torchvision's efficientnet_b4 has 19,341,616 parameters; Keras' own total (19,466,823) adds the BN moving
    # statistics and the input Normalization, which are not trainable.
    inputs = keras.Input((64, 64, 3))               # the count does not depend on the input size; 64 px builds fast
    model = keras.Model(inputs, create_backbone("efficientnet_b4", inputs, include_top=True))
    assert _trainable(model) == 19_341_616 == backbone_config("efficientnet_b4").reference_params


def test_unknown_backbone_suggests_a_name():
    with pytest.raises(ValueError, match="Did you mean 'densenet161'"):
        backbone_config("densenet16")


def test_imagenet_without_keras_weights_explains(tmp_path):
    with pytest.raises(ValueError, match="no ImageNet weights for 'vgg19_bn'"):
        build_classifier("vgg19_bn", input_size=32, weights="imagenet")
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_classifier("mobilenet_v2", input_size=32, weights=str(tmp_path / "missing.weights.h5"))


def test_local_weights_file_round_trip(tmp_path):
    model = build_classifier("mobilenet_v2", input_size=32)
    path = tmp_path / "mn.weights.h5"
    model.save_weights(path)
    clone = build_classifier("mobilenet_v2", input_size=32, weights=str(path))
    for a, b in zip(model.get_weights(), clone.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_grouped_conv_split_and_grouped_share_one_kernel():
    from tfflannel.models.backbones.resnext import GroupedConv2D

    inputs = keras.Input((33, 33, 64))
    split = keras.Model(inputs, GroupedConv2D(64, 3, 8, 2, "split", name="conv")(inputs))
    grouped = keras.Model(inputs, GroupedConv2D(64, 3, 8, 2, "grouped", name="conv")(inputs))
    assert [w.shape for w in split.weights] == [w.shape for w in grouped.weights] == [(3, 3, 8, 64)]
    grouped.set_weights(split.get_weights())
    x = np.random.default_rng(0).random((2, 33, 33, 64), dtype=np.float32)
    expected = np.zeros((2, 16, 16, 64), np.float32)          # NumPy oracle: per group, a valid strided conv
    kernel = split.get_weights()[0]
    for g in range(8):
        part, k = x[..., g * 8:(g + 1) * 8], kernel[..., g * 8:(g + 1) * 8]
        for i in range(3):
            for j in range(3):
                expected[..., g * 8:(g + 1) * 8] += np.einsum("bhwc,co->bhwo", part[:, i:i + 31:2, j:j + 31:2], k[i, j])
    np.testing.assert_allclose(np.asarray(split(x)), expected, atol=1e-4)
    np.testing.assert_allclose(np.asarray(grouped(x)), expected, atol=1e-4)


def test_grouped_conv_keras_file_round_trip(tmp_path):
    from tfflannel.models.backbones.resnext import GroupedConv2D

    inputs = keras.Input((9, 9, 8))
    model = keras.Model(inputs, GroupedConv2D(8, 3, 4, 2, "grouped", name="conv")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("conv").impl == "grouped"
    x = np.random.default_rng(1).random((1, 9, 9, 8), dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    with pytest.raises(ValueError, match="impl must be one of"):
        GroupedConv2D(8, 3, 4, impl="auto")


def test_vgg_reference_head_keeps_the_4096_layers_and_needs_224():
    model = build_classifier("vgg19_bn", input_size=224, head="reference")
    assert model.get_layer("vgg19_bn_fc2").output.shape[-1] == 4096
    assert _trainable(model) == TORCHVISION_PARAMS["vgg19_bn"] - 4096 * 1000 - 1000 + 4096 * 4 + 4
    with pytest.raises(ValueError, match="7x7 feature map"):
        build_classifier("vgg19_bn", input_size=64, head="reference")
    with pytest.raises(ValueError, match="head must be one of"):
        build_classifier("vgg19_bn", input_size=64, head="fc")
