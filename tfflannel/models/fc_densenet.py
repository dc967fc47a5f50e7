"""FC-DenseNet ("The One Hundred Layers Tiramisu", Jegou et al., CVPR-W 2017) lung segmenter.

Built exactly as the Patched FLANNEL original (bfortuner/pytorch_tiramisu): a 3x3
first conv, dense blocks of BN-ReLU-Conv3x3-Dropout layers, transition down =
BN-ReLU-Conv1x1-Dropout-MaxPool, transition up = 3x3 stride-2 transposed conv
(`same` padding, so no crop), up blocks passing on only their new feature maps,
and a 1x1 conv + softmax head. PyTorch's Dropout2d is Keras' SpatialDropout2D;
PyTorch BN momentum 0.1 is Keras momentum 0.9.
"""

from __future__ import annotations

import keras
from keras import layers

from tfflannel.models.batch_norm import BatchNormalization

FC_DENSENET_PRESETS = {
    "fcdn103": dict(first_filters=48, growth_rate=16, down_blocks=(4, 5, 7, 10, 12), bottleneck_layers=15,
                    up_blocks=(12, 10, 7, 5, 4)),
    "fcdn67": dict(first_filters=48, growth_rate=16, down_blocks=(5,) * 5, bottleneck_layers=5, up_blocks=(5,) * 5),
    "fcdn56": dict(first_filters=48, growth_rate=12, down_blocks=(4,) * 5, bottleneck_layers=4, up_blocks=(4,) * 5),
    # Between fcdn_small and fcdn56: trains on 2 CPU cores at 128 px in about 6 min per 50 images x 60 epochs.
    "fcdn_medium": dict(first_filters=24, growth_rate=12, down_blocks=(4,) * 5, bottleneck_layers=4,
                        up_blocks=(4,) * 5),
    # Small member for CPU training and tests (trains in minutes on 2 cores).
    "fcdn_small": dict(first_filters=16, growth_rate=8, down_blocks=(3,) * 5, bottleneck_layers=3, up_blocks=(3,) * 5),
    # A test model (as timm's `test_*`): the same five levels, one layer per block; traces and trains in seconds.
    "fcdn_test": dict(first_filters=8, growth_rate=4, down_blocks=(1,) * 5, bottleneck_layers=1, up_blocks=(1,) * 5),
}

SEGMENTATION_CLASSES = {
    "lung": ("background", "lung"),
    "jsrt": ("background", "heart", "left_lung", "right_lung"),
}
"""Label sets: `lung` (binary) or JSRT/SCR style; the lung mask is the union of the lung classes."""


def lung_class_indices(classes):
    """Indices of the classes whose union is the lung mask.

    Args:
        classes: str. A key of `SEGMENTATION_CLASSES` (`"lung"` or `"jsrt"`).

    Returns:
        list of int. Channel indices of the classes whose name contains "lung"
        (`[1]` for `lung`, `[2, 3]` for `jsrt`).

    Raises:
        KeyError: if `classes` is not a key of `SEGMENTATION_CLASSES`.
    """
    return [i for i, name in enumerate(SEGMENTATION_CLASSES[classes]) if "lung" in name]


def apply_dense_layer(x, growth_rate, dropout, bn_momentum, name):
    """Apply one dense layer: BN, ReLU, 3x3 conv (`growth_rate` filters, He uniform), spatial dropout.

    Args:
        x: tensor. Input feature map, shape `(B, H, W, C)`.
        growth_rate: int. Number of new feature maps (conv filters).
        dropout: float. `SpatialDropout2D` rate; `0` adds no dropout layer.
        bn_momentum: float. Keras BatchNormalization momentum (epsilon is 1e-5, as in PyTorch).
        name: str. Prefix of the layer names (`{name}_bn`, `{name}_relu`, `{name}_conv`, `{name}_drop`).

    Returns:
        tensor of shape `(B, H, W, growth_rate)`: only the new features, not concatenated with `x`.
    """
    x = BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.Conv2D(growth_rate, 3, padding="same", kernel_initializer="he_uniform", name=f"{name}_conv")(x)
    if dropout:
        x = layers.SpatialDropout2D(dropout, name=f"{name}_drop")(x)
    return x


def apply_dense_block(x, num_layers, growth_rate, dropout, bn_momentum, name, new_features_only=False):
    """Apply a dense block: each layer sees the concatenation of the block input and all earlier layers' outputs.

    Args:
        x: tensor. Input feature map, shape `(B, H, W, C)`.
        num_layers: int. Number of dense layers (`apply_dense_layer`).
        growth_rate: int. Feature maps added by each layer.
        dropout: float. Spatial dropout rate of each layer; `0` for none.
        bn_momentum: float. Keras BatchNormalization momentum.
        name: str. Prefix of the layer names (`{name}_layer{i}_*`, `{name}_concat{i}`, `{name}_new`).
        new_features_only: bool. Return only the `num_layers * growth_rate` maps the block made
            (the original's up-path and bottleneck blocks), not the input as well. Defaults to `False`.

    Returns:
        tensor of shape `(B, H, W, C + num_layers * growth_rate)`, or
        `(B, H, W, num_layers * growth_rate)` when `new_features_only`.
    """
    new_features = []
    for index in range(num_layers):
        features = apply_dense_layer(x, growth_rate, dropout, bn_momentum, f"{name}_layer{index + 1}")
        new_features.append(features)
        x = layers.Concatenate(name=f"{name}_concat{index + 1}")([x, features])
    if new_features_only:
        if len(new_features) == 1:
            return new_features[0]
        return layers.Concatenate(name=f"{name}_new")(new_features)
    return x


def apply_transition_down(x, dropout, bn_momentum, name):
    """Apply a transition down: BN, ReLU, 1x1 conv keeping the channel count, spatial dropout, 2x2 max pool.

    Args:
        x: tensor. Input feature map, shape `(B, H, W, C)` with static `C`.
        dropout: float. `SpatialDropout2D` rate; `0` adds no dropout layer.
        bn_momentum: float. Keras BatchNormalization momentum.
        name: str. Prefix of the layer names (`{name}_bn`, `{name}_conv`, `{name}_pool`, ...).

    Returns:
        tensor of shape `(B, H // 2, W // 2, C)`.
    """
    channels = x.shape[-1]
    x = BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    x = layers.Conv2D(channels, 1, kernel_initializer="he_uniform", name=f"{name}_conv")(x)
    if dropout:
        x = layers.SpatialDropout2D(dropout, name=f"{name}_drop")(x)
    return layers.MaxPooling2D(2, name=f"{name}_pool")(x)


def _architecture(preset, input_shape, overrides):
    """The preset's architecture with `overrides` applied, checked against itself and the input shape.

    Raises:
        ValueError: an unknown preset, `down_blocks` and `up_blocks` of different lengths, or H or W not a
            multiple of `2 ** len(down_blocks)`.
    """
    if preset not in FC_DENSENET_PRESETS:
        raise ValueError(f"preset must be one of {sorted(FC_DENSENET_PRESETS)}. Received: preset={preset!r}.")
    arch = dict(FC_DENSENET_PRESETS[preset], **overrides)
    depth = len(arch["down_blocks"])
    if len(arch["up_blocks"]) != depth:
        raise ValueError(f"down_blocks and up_blocks must have the same length. Received: {arch}.")
    if input_shape[0] is not None and (input_shape[0] % 2**depth or input_shape[1] % 2**depth):
        raise ValueError(
            f"input height and width must be multiples of {2**depth}. Received: input_shape={input_shape}."
        )
    return arch


def build_fc_densenet(
    preset="fcdn103",
    num_classes=2,
    input_shape=(256, 256, 1),
    dropout=0.2,
    bn_momentum=0.9,
    name=None,
    **overrides,
):
    """Build an FC-DenseNet as a functional Keras model with a softmax output.

    Args:
        preset: str. One of `FC_DENSENET_PRESETS` (`fcdn103`, `fcdn67`, `fcdn56`, `fcdn_medium`, `fcdn_small`,
            `fcdn_test`).
            Defaults to `"fcdn103"`.
        num_classes: int. Output classes (2 = background/lung, 4 = JSRT style). Defaults to `2`.
        input_shape: tuple. (H, W, C); H and W multiples of `2 ** len(down_blocks)` (32 for every
            preset), or `None` for any size. Defaults to `(256, 256, 1)`.
        dropout: float. Spatial dropout rate after each conv (the original's 0.2). Defaults to `0.2`.
        bn_momentum: float. Keras BN momentum (0.9 = PyTorch's 0.1). Defaults to `0.9`.
        name: str or None. Model name. Defaults to `None` (the preset name).
        **overrides: architecture keys of the preset to change (`first_filters`, `growth_rate`,
            `down_blocks`, `bottleneck_layers`, `up_blocks`; e.g. `growth_rate=8`).

    Returns:
        keras.Model mapping (B, H, W, C) float in [0, 1] to (B, H, W, num_classes) float32
        softmax probabilities (the output layer is float32 under mixed precision too).

    Raises:
        ValueError: if `preset` is unknown, `down_blocks` and `up_blocks` differ in length, or
            H or W is not a multiple of `2 ** len(down_blocks)`.

    Example:
        >>> model = build_fc_densenet("fcdn_small", input_shape=(64, 64, 1))
    """
    arch = _architecture(preset, input_shape, overrides)
    depth, growth = len(arch["down_blocks"]), arch["growth_rate"]

    # === Functional Model ===
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(
        arch["first_filters"], 3, padding="same", kernel_initializer="he_uniform", name="first_conv"
    )(inputs)
    skips = []
    for index, num_layers in enumerate(arch["down_blocks"]):
        x = apply_dense_block(x, num_layers, growth, dropout, bn_momentum, f"down{index + 1}")
        skips.append(x)
        x = apply_transition_down(x, dropout, bn_momentum, f"td{index + 1}")
    x = apply_dense_block(
        x, arch["bottleneck_layers"], growth, dropout, bn_momentum, "bottleneck", new_features_only=True
    )
    for index, num_layers in enumerate(arch["up_blocks"]):
        skip = skips[-(index + 1)]
        x = layers.Conv2DTranspose(x.shape[-1], 3, strides=2, padding="same", kernel_initializer="he_uniform",
                                   name=f"tu{index + 1}")(x)
        x = layers.Concatenate(name=f"tu{index + 1}_skip")([x, skip])
        last = index == depth - 1
        x = apply_dense_block(x, num_layers, growth, dropout, bn_momentum, f"up{index + 1}", new_features_only=not last)
    x = layers.Conv2D(num_classes, 1, kernel_initializer="he_uniform", name="head_conv")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name or preset)
