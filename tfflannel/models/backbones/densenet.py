"""DenseNet161 in the torchvision layout (Huang et al., CVPR 2017): Keras has no DenseNet161."""

from __future__ import annotations

from keras import layers

from tfflannel.models.backbones.registry import BackboneConfig, register_backbone
from tfflannel.models.batch_norm import BatchNormalization


def _bn(x, momentum, name):
    return BatchNormalization(momentum=momentum, epsilon=1e-5, name=name)(x)


def apply_densenet_layer(x, growth_rate, bn_size, bn_momentum, name):
    """BN-ReLU-Conv1x1(bn_size*growth)-BN-ReLU-Conv3x3(growth), concatenated to the input.

    Args:
        x: KerasTensor. (B, H, W, C) input.
        growth_rate: int. Channels the layer adds.
        bn_size: int. Bottleneck width as a multiple of `growth_rate`.
        bn_momentum: float. Keras BatchNormalization momentum.
        name: str. Layer-name prefix.

    Returns:
        KerasTensor of shape (B, H, W, C + growth_rate).
    """
    y = layers.Activation("relu", name=f"{name}_relu1")(_bn(x, bn_momentum, f"{name}_bn1"))
    y = layers.Conv2D(bn_size * growth_rate, 1, use_bias=False, name=f"{name}_conv1")(y)
    y = layers.Activation("relu", name=f"{name}_relu2")(_bn(y, bn_momentum, f"{name}_bn2"))
    y = layers.Conv2D(growth_rate, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    return layers.Concatenate(name=f"{name}_concat")([x, y])


def apply_transition(x, bn_momentum, name):
    """Transition between dense blocks: BN-ReLU-Conv1x1 halving the channels, then avg-pool 2/2 (no padding).

    Args:
        x: KerasTensor. (B, H, W, C) output of a dense block.
        bn_momentum: float. Keras BatchNormalization momentum.
        name: str. Layer-name prefix.

    Returns:
        KerasTensor of shape (B, H // 2, W // 2, C // 2).
    """
    y = layers.Activation("relu", name=f"{name}_relu")(_bn(x, bn_momentum, f"{name}_bn"))
    y = layers.Conv2D(x.shape[-1] // 2, 1, use_bias=False, name=f"{name}_conv")(y)
    return layers.AveragePooling2D(2, strides=2, name=f"{name}_pool")(y)


def build_densenet(inputs, growth_rate, blocks, stem, bn_size=4, bn_momentum=0.9, include_top=False, classes=1000,
                   prefix="densenet"):
    """Build a torchvision-layout DenseNet on `inputs` (flat graph, layer names start with `prefix`).

    Stem conv 7/2 (pad 3) -> BN-ReLU -> max-pool 3/2 (pad 1), the dense blocks with transitions between them,
    then a final BN-ReLU.

    Args:
        inputs: KerasTensor. (B, H, W, 3) input, already scaled (ImageNet mean/std).
        growth_rate: int. Channels each dense layer adds.
        blocks: tuple of int. Dense layers per block.
        stem: int. Channels of the stem convolution.
        bn_size: int. Bottleneck width as a multiple of `growth_rate`. Defaults to `4`.
        bn_momentum: float. Keras BatchNormalization momentum (0.9 is PyTorch's 0.1). Defaults to `0.9`.
        include_top: bool. Append global average pooling and, with `classes`, a Dense layer. Defaults to `False`.
        classes: int. Units of the Dense layer; `0` stops after the pooling. Defaults to `1000`.
        prefix: str. Layer-name prefix. Defaults to `"densenet"`.

    Returns:
        KerasTensor. The (B, h, w, C) feature map after the final ReLU; with `include_top` the (B, C) pooled
        features or (B, classes) logits.
    """
    x = layers.ZeroPadding2D(3, name=f"{prefix}_stem_pad")(inputs)
    x = layers.Conv2D(stem, 7, strides=2, use_bias=False, name=f"{prefix}_stem_conv")(x)
    x = layers.Activation("relu", name=f"{prefix}_stem_relu")(_bn(x, bn_momentum, f"{prefix}_stem_bn"))
    x = layers.ZeroPadding2D(1, name=f"{prefix}_stem_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name=f"{prefix}_stem_pool")(x)
    for block, num_layers in enumerate(blocks, start=1):
        for index in range(1, num_layers + 1):
            x = apply_densenet_layer(x, growth_rate, bn_size, bn_momentum, f"{prefix}_block{block}_layer{index}")
        if block != len(blocks):
            x = apply_transition(x, bn_momentum, f"{prefix}_transition{block}")
    x = layers.Activation("relu", name=f"{prefix}_final_relu")(_bn(x, bn_momentum, f"{prefix}_final_bn"))
    if include_top:
        x = layers.GlobalAveragePooling2D(name=f"{prefix}_avg_pool")(x)
        if classes:
            x = layers.Dense(classes, name=f"{prefix}_classifier")(x)
    return x


@register_backbone(BackboneConfig("densenet161", 224, "torch", 2208, "densenet161_final_relu", False, 28_681_000))
def densenet161(inputs, weights=None, include_top=False, bn_momentum=0.9, classes=1000, **kwargs):
    """DenseNet161: stem 96, growth 48, blocks 6-12-36-24, bottleneck 4x (torchvision `densenet161`).

    torchvision's padding throughout: stem conv 7/2 pad 3, max-pool 3/2 pad 1 (zero padding after the
    ReLU equals torch's -inf padding), transition avg-pool 2/2 without padding (floor, as torch).

    Args:
        inputs: KerasTensor. (B, H, W, 3) input scaled with the ImageNet mean/std.
        weights: unused: `tfflannel.models.classifier.build_classifier` loads weights after building.
            Defaults to `None`.
        include_top: bool. Append global average pooling -> fc (torchvision's classifier). Defaults to `False`.
        bn_momentum: float. Keras BatchNormalization momentum (0.9 is PyTorch's 0.1). Defaults to `0.9`.
        classes: int. Units of the fc layer; `0` stops before it. Defaults to `1000`.
        **kwargs: ignored (options meant for other backbones, such as `impl`).

    Returns:
        KerasTensor. The (B, h, w, 2208) last feature map; with `include_top` the (B, 2208) pooled features or
        (B, classes) logits.
    """
    return build_densenet(inputs, 48, (6, 12, 36, 24), 96, bn_momentum=bn_momentum, include_top=include_top,
                          classes=classes, prefix="densenet161")
