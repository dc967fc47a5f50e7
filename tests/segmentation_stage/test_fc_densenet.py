"""FC-DenseNet: exact parameter count of the original FC-DenseNet103, shapes, softmax."""

import numpy as np
import pytest

from tfflannel.models.fc_densenet import FC_DENSENET_PRESETS, build_fc_densenet


def _count_like_pytorch(first, growth, down, bottleneck, up, in_ch=1, classes=4):
    """Trainable parameters of the PyTorch original, counted layer by layer (BN gamma/beta, conv bias)."""
    def conv(cin, cout, k):
        return cin * cout * k * k + cout

    def dense_block(cin, layers):
        total, c = 0, cin
        for _ in range(layers):
            total += 2 * c + conv(c, growth, 3)
            c += growth
        return total, c

    total = conv(in_ch, first, 3)
    c, skips = first, []
    for layers in down:
        params, c = dense_block(c, layers)
        total += params
        skips.append(c)
        total += 2 * c + conv(c, c, 1)
    params, _ = dense_block(c, bottleneck)
    total += params
    prev_new = bottleneck * growth
    for index, layers in enumerate(up):
        total += conv(prev_new, prev_new, 3)  # ConvTranspose2d(prev_new, prev_new, 3)
        cin = prev_new + skips[-(index + 1)]
        params, c = dense_block(cin, layers)
        total += params
        prev_new = layers * growth
    return total + conv(c, classes, 1)


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_fcdn103_trainable_parameters_match_original():
    model = build_fc_densenet("fcdn103", num_classes=4)
    assert _trainable(model) == 9_319_428
    assert _trainable(model) == _count_like_pytorch(48, 16, (4, 5, 7, 10, 12), 15, (12, 10, 7, 5, 4))


@pytest.mark.parametrize("preset", ["fcdn67", "fcdn56", "fcdn_small", "fcdn_test"])
def test_family_members_match_their_pytorch_count(preset):
    arch = FC_DENSENET_PRESETS[preset]
    model = build_fc_densenet(preset, num_classes=2)
    expected = _count_like_pytorch(arch["first_filters"], arch["growth_rate"], arch["down_blocks"],
                                   arch["bottleneck_layers"], arch["up_blocks"], classes=2)
    assert _trainable(model) == expected


def test_output_shape_and_softmax():
    model = build_fc_densenet("fcdn_small", num_classes=4, input_shape=(64, 64, 1))
    out = np.asarray(model(np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32), training=False))
    assert out.shape == (2, 64, 64, 4)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-5)
    assert model.get_layer("down1_layer1_bn").momentum == pytest.approx(0.9)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="multiples of 32"):
        build_fc_densenet("fcdn_small", input_shape=(100, 100, 1))
    with pytest.raises(ValueError, match="preset must be one of"):
        build_fc_densenet("fcdn42")
