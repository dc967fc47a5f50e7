"""`test_cnn` and `test_cnn_bn`: tiny test models (timm's `test_*` spirit), not classifiers for results.

Four stride-2 3x3 convolutions (16, 32, 64, 64 channels, ReLU) and, as its reference head, global MAX pooling:
about 61,000 weights with a 4-class head, trained in seconds on a CPU. Global max pooling lets it pick up one
bright, local cue anywhere in the image within a few hundred steps (global average pooling did not, in the
trial recorded in issue 22), which is what the shortcut-audit test plants (`tests/audit/test_planted_shortcut.py`).
`test_cnn_bn` is the same with batch normalisation after each convolution (tfflannel's fused layer, as in the
hand-written backbones): a second cheap learner, with batch norm like every real backbone, for tests that need two
(an ensemble, a grid), traced in a second or two where MobileNetV2 takes twenty. Usable by every command like any
registered backbone; never report their numbers as a result.
"""

from __future__ import annotations

from keras import layers

from tfflannel.models.backbones.registry import BackboneConfig, register_backbone
from tfflannel.models.batch_norm import BatchNormalization

TEST_CNN_CHANNELS = (16, 32, 64, 64)


@register_backbone(BackboneConfig("test_cnn", 224, "tf", TEST_CNN_CHANNELS[-1],
                                  f"test_cnn_conv{len(TEST_CNN_CHANNELS)}", False, 0, head_layers=True))
def test_cnn(inputs, weights=None, include_top=False, classes=1000, **kwargs):
    """The test model: stride-2 conv3x3 + ReLU per entry of `TEST_CNN_CHANNELS`, then global max pooling.

    Args:
        inputs: KerasTensor. (B, H, W, 3) input scaled to [-1, 1].
        weights: unused (`build_classifier` loads weights after building). Defaults to `None`.
        include_top: bool. Append the global max pooling (the `reference` head) and, if `classes`, a Dense layer
            of `classes` logits. Defaults to `False`.
        classes: int. Logits of the top; `0` stops after the pooling. Defaults to `1000`.
        **kwargs: ignored (options meant for other backbones, such as `bn_momentum`).

    Returns:
        KerasTensor. The (B, H / 16, W / 16, 64) feature map; with `include_top` the (B, 64) max-pooled features
        or (B, classes) logits.
    """
    x = inputs
    for number, channels in enumerate(TEST_CNN_CHANNELS, start=1):
        x = layers.Conv2D(channels, 3, strides=2, padding="same", activation="relu", name=f"test_cnn_conv{number}")(x)
    return _max_pool_head(x, include_top, classes, "test_cnn")


@register_backbone(BackboneConfig("test_cnn_bn", 224, "tf", TEST_CNN_CHANNELS[-1],
                                  f"test_cnn_bn_relu{len(TEST_CNN_CHANNELS)}", False, 0, head_layers=True))
def test_cnn_bn(inputs, weights=None, include_top=False, classes=1000, bn_momentum=0.9, **kwargs):
    """`test_cnn` with batch normalisation: conv3x3 (stride 2, no bias) + BatchNorm + ReLU per block.

    Same inputs, head and outputs as `test_cnn` (its docstring describes `inputs`, `weights`, `include_top`,
    `classes` and the returned tensor); `bn_momentum` is the Keras momentum of the moving statistics (0.9 =
    PyTorch's 0.1, default 0.9); other keyword arguments are ignored.
    """
    x = inputs
    for number, channels in enumerate(TEST_CNN_CHANNELS, start=1):
        x = layers.Conv2D(channels, 3, strides=2, padding="same", use_bias=False, name=f"test_cnn_bn_conv{number}")(x)
        x = BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"test_cnn_bn_bn{number}")(x)
        x = layers.ReLU(name=f"test_cnn_bn_relu{number}")(x)
    return _max_pool_head(x, include_top, classes, "test_cnn_bn")


def _max_pool_head(x, include_top, classes, prefix):
    """The test models' `reference` head: global max pooling, then `classes` logits (none when 0)."""
    if include_top:
        x = layers.GlobalMaxPooling2D(name=f"{prefix}_max_pool")(x)
        if classes:
            x = layers.Dense(classes, name=f"{prefix}_predictions")(x)
    return x
