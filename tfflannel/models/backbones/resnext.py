"""ResNeXt101 32x8d and ResNet152 in the torchvision layout (Xie et al., CVPR 2017; He et al., CVPR 2016).

torchvision's Bottleneck: stride in the 3x3 conv, no conv biases, BN eps 1e-5. Every 3x3 conv is
padded explicitly by 1 on every side (`ZeroPadding2D(1)` + `valid`), as torchvision does: Keras'
`padding="same"` at stride 2 pads 0 before and 1 after on even sizes, which shifted every strided
block by one pixel (runs trained before that fix are not comparable).

The grouped 3x3 convolution is one layer, `GroupedConv2D`, holding one `(3, 3, C_in / g, C_out)`
kernel on every host; `impl` only chooses how it is computed: `split` (g convolutions on channel
slices, concatenated: fast on CPU, where the backward pass of a grouped convolution measured ~45x
slower) or `grouped` (one grouped convolution: fast on GPUs). A weights file saved in either mode
loads into the other with identical outputs (tested).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from tfflannel.models.backbones.registry import BackboneConfig, register_backbone
from tfflannel.models.batch_norm import BatchNormalization

GROUPED_CONV_IMPLS = ("split", "grouped")


@keras.saving.register_keras_serializable(package="tfflannel")
class GroupedConv2D(layers.Layer):
    """A grouped convolution without bias, `valid` padding, one kernel `(k, k, C_in / groups, filters)`.

    Args:
        filters: int. Output channels (a multiple of `groups`).
        kernel_size: int. Square kernel side.
        groups: int. Channel groups (the input channels must be a multiple of it).
        strides: int. Defaults to `1`.
        impl: str. `split` (one convolution per group, concatenated) or `grouped` (one grouped
            convolution); same variables and outputs either way. Defaults to `"split"`.
    """

    def __init__(self, filters, kernel_size, groups, strides=1, impl="split", **kwargs):
        super().__init__(**kwargs)
        if impl not in GROUPED_CONV_IMPLS:
            raise ValueError(f"impl must be one of {GROUPED_CONV_IMPLS}. Received: impl={impl!r}.")
        if filters % groups:
            raise ValueError(f"filters must be a multiple of groups. Received: filters={filters}, groups={groups}.")
        self.filters, self.kernel_size, self.groups = int(filters), int(kernel_size), int(groups)
        self.strides, self.impl = int(strides), impl

    def build(self, input_shape):
        """Create the `(k, k, C_in / groups, filters)` kernel (Glorot uniform).

        Raises:
            ValueError: the input channels are not a multiple of `groups`.
        """
        channels = input_shape[-1]
        if channels % self.groups:
            raise ValueError(f"{self.name}: input channels {channels} are not a multiple of groups={self.groups}")
        self.kernel = self.add_weight(name="kernel", initializer="glorot_uniform",
                                      shape=(self.kernel_size, self.kernel_size, channels // self.groups,
                                             self.filters))

    def call(self, inputs):
        """Convolve (B, H, W, C_in) inputs to (B, (H - k) // s + 1, (W - k) // s + 1, filters), `valid` padding."""
        if self.impl == "grouped" or self.groups == 1:
            return ops.conv(inputs, self.kernel, strides=self.strides, padding="valid")
        # `split`, not slicing: a slice's gradient is a zero-padded full-size copy per group (on 2 CPU cores
        # those copies and their sum took a third of a ResNeXt101 training step); a split's is one concatenation.
        parts = [ops.conv(group, kernel, strides=self.strides, padding="valid")
                 for group, kernel in zip(ops.split(inputs, self.groups, axis=-1),
                                          ops.split(self.kernel, self.groups, axis=-1), strict=True)]
        return ops.concatenate(parts, axis=-1)

    def compute_output_shape(self, input_shape):
        """Return the output shape of `valid` convolution at the layer's stride."""

        def side(n):
            return None if n is None else (n - self.kernel_size) // self.strides + 1

        return (input_shape[0], side(input_shape[1]), side(input_shape[2]), self.filters)

    def get_config(self):
        """Return the layer config with `filters`, `kernel_size`, `groups`, `strides` and `impl`."""
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "groups": self.groups, "strides": self.strides, "impl": self.impl}


def _bn(x, momentum, name):
    return BatchNormalization(momentum=momentum, epsilon=1e-5, name=name)(x)


def apply_bottleneck(x, planes, strides, groups, base_width, bn_momentum, impl, name):
    """Bottleneck block of torchvision: 1x1 -> 3x3 (stride, groups) -> 1x1 (x4), projection shortcut when needed.

    Args:
        x: KerasTensor. (B, H, W, C) input.
        planes: int. Base width; the block outputs `4 * planes` channels.
        strides: int. Stride of the 3x3 convolution and of the projection shortcut.
        groups: int. Groups of the 3x3 convolution (1: a plain `Conv2D`).
        base_width: int. Width per group; the 3x3 has `int(planes * base_width / 64) * groups` channels.
        bn_momentum: float. Keras BatchNormalization momentum.
        impl: str. `split` or `grouped` (see `GroupedConv2D`).
        name: str. Layer-name prefix.

    Returns:
        KerasTensor. (B, ceil(H / strides), ceil(W / strides), 4 * planes) after the residual add and ReLU.
    """
    width = int(planes * (base_width / 64.0)) * groups
    out_channels = planes * 4
    shortcut = x
    if strides != 1 or x.shape[-1] != out_channels:
        shortcut = layers.Conv2D(out_channels, 1, strides=strides, use_bias=False, name=f"{name}_down_conv")(x)
        shortcut = _bn(shortcut, bn_momentum, f"{name}_down_bn")
    y = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_conv1")(x)
    y = layers.Activation("relu", name=f"{name}_relu1")(_bn(y, bn_momentum, f"{name}_bn1"))
    y = layers.ZeroPadding2D(1, name=f"{name}_conv2_pad")(y)
    if groups == 1:
        y = layers.Conv2D(width, 3, strides=strides, use_bias=False, name=f"{name}_conv2")(y)
    else:
        y = GroupedConv2D(width, 3, groups, strides, impl, name=f"{name}_conv2")(y)
    y = layers.Activation("relu", name=f"{name}_relu2")(_bn(y, bn_momentum, f"{name}_bn2"))
    y = layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_conv3")(y)
    y = _bn(y, bn_momentum, f"{name}_bn3")
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def build_resnext(inputs, blocks, groups, base_width, bn_momentum=0.9, impl="split", include_top=False, classes=1000,
                  prefix="resnext"):
    """Build a torchvision-layout ResNet/ResNeXt on `inputs`; `include_top` adds GAP + fc (`classes=0`: GAP only).

    Args:
        inputs: KerasTensor. (B, H, W, 3) input scaled with the ImageNet mean/std.
        blocks: tuple of 4 int. Bottlenecks per stage.
        groups: int. Cardinality of the 3x3 convolutions (1 for ResNet).
        base_width: int. Width per group (64 for ResNet).
        bn_momentum: float. Keras BatchNormalization momentum (0.9 is PyTorch's 0.1). Defaults to `0.9`.
        impl: str. `split` or `grouped` (see `GroupedConv2D`). Defaults to `"split"`.
        include_top: bool. Append GAP and, with `classes`, fc. Defaults to `False`.
        classes: int. Units of fc; `0` stops after GAP. Defaults to `1000`.
        prefix: str. Layer-name prefix. Defaults to `"resnext"`.

    Returns:
        KerasTensor. The (B, h, w, 2048) stage-4 output; with `include_top` (B, 2048) or (B, classes) logits.
    """
    x = layers.ZeroPadding2D(3, name=f"{prefix}_stem_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name=f"{prefix}_stem_conv")(x)
    x = _bn(x, bn_momentum, f"{prefix}_stem_bn")
    x = layers.Activation("relu", name=f"{prefix}_stem_relu")(x)
    x = layers.ZeroPadding2D(1, name=f"{prefix}_stem_pool_pad")(x)   # after ReLU: zero == torch's -inf padding
    x = layers.MaxPooling2D(3, strides=2, name=f"{prefix}_stem_pool")(x)
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True), start=1):
        for index in range(count):
            strides = 2 if index == 0 and stage > 1 else 1
            x = apply_bottleneck(x, planes, strides, groups, base_width, bn_momentum, impl,
                                 f"{prefix}_stage{stage}_block{index + 1}")
    if include_top:
        x = layers.GlobalAveragePooling2D(name=f"{prefix}_avg_pool")(x)
        if classes:
            x = layers.Dense(classes, name=f"{prefix}_fc")(x)
    return x


@register_backbone(BackboneConfig("resnext101_32x8d", 224, "torch", 2048, "resnext101_32x8d_stage4_block3_out",
                                  False, 88_791_336, grouped_conv=True))
def resnext101_32x8d(inputs, weights=None, include_top=False, bn_momentum=0.9, impl="split", classes=1000):
    """ResNeXt101 32x8d: blocks 3-4-23-3, cardinality 32, width 8 per group (torchvision layout).

    Args:
        inputs: KerasTensor. (B, H, W, 3) input scaled with the ImageNet mean/std.
        weights: unused: `tfflannel.models.classifier.build_classifier` loads weights after building.
            Defaults to `None`.
        include_top: bool. Append global average pooling -> fc. Defaults to `False`.
        bn_momentum: float. Keras BatchNormalization momentum (0.9 is PyTorch's 0.1). Defaults to `0.9`.
        impl: str. How the grouped 3x3 convolutions are computed, `split` or `grouped` (see `GroupedConv2D`).
            Defaults to `"split"`.
        classes: int. Units of the fc layer; `0` stops before it. Defaults to `1000`.

    Returns:
        KerasTensor. The (B, h, w, 2048) last feature map; with `include_top` the (B, 2048) pooled features or
        (B, classes) logits.
    """
    return build_resnext(inputs, (3, 4, 23, 3), 32, 8, bn_momentum, impl, include_top, classes,
                         prefix="resnext101_32x8d")


@register_backbone(BackboneConfig("resnet152_tv", 224, "torch", 2048, "resnet152_tv_stage4_block3_out",
                                  False, 60_192_808))
def resnet152_tv(inputs, weights=None, include_top=False, bn_momentum=0.9, classes=1000, **kwargs):
    """ResNet152 in the torchvision layout (stride in the 3x3, no conv biases): blocks 3-8-36-3, width 64.

    Args:
        inputs: KerasTensor. (B, H, W, 3) input scaled with the ImageNet mean/std.
        weights: unused: `tfflannel.models.classifier.build_classifier` loads weights after building.
            Defaults to `None`.
        include_top: bool. Append global average pooling -> fc. Defaults to `False`.
        bn_momentum: float. Keras BatchNormalization momentum (0.9 is PyTorch's 0.1). Defaults to `0.9`.
        classes: int. Units of the fc layer; `0` stops before it. Defaults to `1000`.
        **kwargs: ignored (`impl`: ResNet152 has no grouped convolutions).

    Returns:
        KerasTensor. The (B, h, w, 2048) last feature map; with `include_top` the (B, 2048) pooled features or
        (B, classes) logits.
    """
    return build_resnext(inputs, (3, 8, 36, 3), 1, 64, bn_momentum, "split", include_top, classes,
                         prefix="resnet152_tv")
