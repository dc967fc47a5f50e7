"""ResNeXt101 32x8d in the torchvision layout (Xie et al., CVPR 2017): stride in the 3x3 conv.

Grouped 3x3 convolutions have two implementations with identical parameters:
`grouped` (one Conv2D with groups=32, fast on GPUs) and `split` (32 convolutions
on channel slices, concatenated). On CPU the backward pass of Keras' grouped
convolution measured ~45x slower here, so `auto` picks `split` on CPU and
`grouped` where a GPU is visible; `tools/bench_resnext.py` measures both.
"""

from __future__ import annotations

import keras
from keras import layers

from tfflannel.models.backbones.registry import BackboneConfig, register_backbone


def _gpu_visible():
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    return False


def apply_grouped_conv(x, filters, groups, strides, impl, name):
    if impl == "auto":
        impl = "grouped" if _gpu_visible() else "split"
    if impl == "grouped":
        return layers.Conv2D(filters, 3, strides=strides, padding="same", groups=groups, use_bias=False, name=name)(x)
    if impl != "split":
        raise ValueError(f"impl must be 'grouped', 'split' or 'auto'. Received: impl={impl!r}.")
    width = x.shape[-1] // groups
    outputs = []
    for group in range(groups):
        part = SliceChannels(group * width, (group + 1) * width, name=f"{name}_slice{group}")(x)
        outputs.append(layers.Conv2D(filters // groups, 3, strides=strides, padding="same", use_bias=False,
                                     name=f"{name}_g{group}")(part))
    return layers.Concatenate(name=name)(outputs)


@keras.saving.register_keras_serializable(package="tfflannel")
class SliceChannels(layers.Layer):
    """x[..., start:stop] as a serialisable layer."""

    def __init__(self, start, stop, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, inputs):
        return inputs[..., self.start:self.stop]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.stop - self.start)

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


def apply_bottleneck(x, planes, strides, groups, base_width, bn_momentum, impl, name):
    width = int(planes * (base_width / 64.0)) * groups
    out_channels = planes * 4
    shortcut = x
    if strides != 1 or x.shape[-1] != out_channels:
        shortcut = layers.Conv2D(out_channels, 1, strides=strides, use_bias=False, name=f"{name}_down_conv")(x)
        shortcut = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_down_bn")(shortcut)
    y = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_conv1")(x)
    y = layers.Activation("relu", name=f"{name}_relu1")(layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn1")(y))
    y = apply_grouped_conv(y, width, groups, strides, impl, f"{name}_conv2")
    y = layers.Activation("relu", name=f"{name}_relu2")(layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn2")(y))
    y = layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_conv3")(y)
    y = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn3")(y)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))


def build_resnext(inputs, blocks, groups, base_width, bn_momentum=0.9, impl="auto", include_top=False, classes=1000,
                  prefix="resnext"):
    x = layers.ZeroPadding2D(3, name=f"{prefix}_stem_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name=f"{prefix}_stem_conv")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{prefix}_stem_bn")(x)
    x = layers.Activation("relu", name=f"{prefix}_stem_relu")(x)
    x = layers.ZeroPadding2D(1, name=f"{prefix}_stem_pool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name=f"{prefix}_stem_pool")(x)
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks, strict=True), start=1):
        for index in range(count):
            strides = 2 if index == 0 and stage > 1 else 1
            x = apply_bottleneck(x, planes, strides, groups, base_width, bn_momentum, impl,
                                 f"{prefix}_stage{stage}_block{index + 1}")
    if include_top:
        x = layers.GlobalAveragePooling2D(name=f"{prefix}_avg_pool")(x)
        x = layers.Dense(classes, name=f"{prefix}_fc")(x)
    return x


@register_backbone(BackboneConfig("resnext101_32x8d", 224, "torch", 2048, "resnext101_32x8d_stage4_block3_out",
                                  False, 88_791_336))
def resnext101_32x8d(inputs, weights=None, include_top=False, bn_momentum=0.9, impl="auto"):
    """ResNeXt101 32x8d: blocks 3-4-23-3, cardinality 32, width 8 per group (torchvision layout)."""
    return build_resnext(inputs, (3, 4, 23, 3), 32, 8, bn_momentum, impl, include_top, prefix="resnext101_32x8d")
