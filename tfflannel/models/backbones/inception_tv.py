"""InceptionV3 in the torchvision layout (Szegedy et al., CVPR 2016), `inception_v3_tv`.

Unlike `keras.applications.InceptionV3` (registered as `inception_v3`), every BatchNormalization has a
scale (gamma), eps 1e-3, and the 3x3 average pools inside the Inception blocks count the padded
zeros as torchvision's `F.avg_pool2d(x, 3, stride=1, padding=1)` does (explicit `ZeroPadding2D(1)`
+ `valid` pooling; Keras' `same` pooling would exclude them). Layer names follow torchvision's
module paths (`Mixed_5b.branch1x1.conv` -> `inception_v3_tv_Mixed_5b_branch1x1_conv`), so that
`tfflannel.models.weights_import` maps a state dict by name. torchvision's pretrained model scales
its input to [-1, 1] (`transform_input=True`), hence the `tf` pre-processing.
"""

from __future__ import annotations

from keras import layers

from tfflannel.models.backbones.registry import BackboneConfig, register_backbone
from tfflannel.models.batch_norm import BatchNormalization

PREFIX = "inception_v3_tv"


def apply_basic_conv(x, filters, kernel, name, strides=1, padding="valid", bn_momentum=0.9):
    """BasicConv2d of torchvision: conv (no bias) -> BN (eps 1e-3) -> ReLU.

    Args:
        x: KerasTensor. (B, H, W, C) input.
        filters: int. Output channels.
        kernel: int or tuple. Kernel size.
        name: str. The torch module path (`Mixed_5b.branch1x1`); dots become underscores in layer names.
        strides: int. Defaults to `1`.
        padding: `"valid"`, or the explicit zero padding (int or tuple) torch applies on both sides.
            Defaults to `"valid"`.
        bn_momentum: float. Keras BatchNormalization momentum. Defaults to `0.9`.

    Returns:
        KerasTensor. (B, H', W', filters) after the ReLU.
    """
    base = f"{PREFIX}_{name.replace('.', '_')}"
    if padding != "valid":
        x = layers.ZeroPadding2D(padding, name=f"{base}_pad")(x)
    x = layers.Conv2D(filters, kernel, strides=strides, use_bias=False, name=f"{base}_conv")(x)
    x = BatchNormalization(momentum=bn_momentum, epsilon=1e-3, name=f"{base}_bn")(x)
    return layers.Activation("relu", name=f"{base}_relu")(x)


def _avg_pool_3x3(x, name):
    """F.avg_pool2d(x, 3, stride=1, padding=1): padded zeros are counted (count_include_pad=True)."""
    x = layers.ZeroPadding2D(1, name=f"{PREFIX}_{name}_pool_pad")(x)
    return layers.AveragePooling2D(3, strides=1, name=f"{PREFIX}_{name}_pool")(x)


def _max_pool_3x3_s2(x, name):
    return layers.MaxPooling2D(3, strides=2, name=f"{PREFIX}_{name}")(x)


def apply_inception_a(x, pool_features, name, m):
    """InceptionA block of torchvision (Mixed_5b-5d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-pool-1x1, concatenated."""
    b1 = apply_basic_conv(x, 64, 1, f"{name}.branch1x1", bn_momentum=m)
    b5 = apply_basic_conv(x, 48, 1, f"{name}.branch5x5_1", bn_momentum=m)
    b5 = apply_basic_conv(b5, 64, 5, f"{name}.branch5x5_2", padding=2, bn_momentum=m)
    b3 = apply_basic_conv(x, 64, 1, f"{name}.branch3x3dbl_1", bn_momentum=m)
    b3 = apply_basic_conv(b3, 96, 3, f"{name}.branch3x3dbl_2", padding=1, bn_momentum=m)
    b3 = apply_basic_conv(b3, 96, 3, f"{name}.branch3x3dbl_3", padding=1, bn_momentum=m)
    bp = apply_basic_conv(_avg_pool_3x3(x, name), pool_features, 1, f"{name}.branch_pool", bn_momentum=m)
    return layers.Concatenate(name=f"{PREFIX}_{name}")([b1, b5, b3, bp])


def apply_inception_b(x, name, m):
    """InceptionB block of torchvision (Mixed_6a): stride-2 3x3 | 1x1-3x3-3x3/2 | max-pool 3/2."""
    b3 = apply_basic_conv(x, 384, 3, f"{name}.branch3x3", strides=2, bn_momentum=m)
    bd = apply_basic_conv(x, 64, 1, f"{name}.branch3x3dbl_1", bn_momentum=m)
    bd = apply_basic_conv(bd, 96, 3, f"{name}.branch3x3dbl_2", padding=1, bn_momentum=m)
    bd = apply_basic_conv(bd, 96, 3, f"{name}.branch3x3dbl_3", strides=2, bn_momentum=m)
    bp = _max_pool_3x3_s2(x, f"{name}_branch_pool")
    return layers.Concatenate(name=f"{PREFIX}_{name}")([b3, bd, bp])


def apply_inception_c(x, c7, name, m):
    """InceptionC block of torchvision (Mixed_6b-6e): factorised 7x7 branches with `c7` channels."""
    b1 = apply_basic_conv(x, 192, 1, f"{name}.branch1x1", bn_momentum=m)
    b7 = apply_basic_conv(x, c7, 1, f"{name}.branch7x7_1", bn_momentum=m)
    b7 = apply_basic_conv(b7, c7, (1, 7), f"{name}.branch7x7_2", padding=(0, 3), bn_momentum=m)
    b7 = apply_basic_conv(b7, 192, (7, 1), f"{name}.branch7x7_3", padding=(3, 0), bn_momentum=m)
    bd = apply_basic_conv(x, c7, 1, f"{name}.branch7x7dbl_1", bn_momentum=m)
    bd = apply_basic_conv(bd, c7, (7, 1), f"{name}.branch7x7dbl_2", padding=(3, 0), bn_momentum=m)
    bd = apply_basic_conv(bd, c7, (1, 7), f"{name}.branch7x7dbl_3", padding=(0, 3), bn_momentum=m)
    bd = apply_basic_conv(bd, c7, (7, 1), f"{name}.branch7x7dbl_4", padding=(3, 0), bn_momentum=m)
    bd = apply_basic_conv(bd, 192, (1, 7), f"{name}.branch7x7dbl_5", padding=(0, 3), bn_momentum=m)
    bp = apply_basic_conv(_avg_pool_3x3(x, name), 192, 1, f"{name}.branch_pool", bn_momentum=m)
    return layers.Concatenate(name=f"{PREFIX}_{name}")([b1, b7, bd, bp])


def apply_inception_d(x, name, m):
    """InceptionD block of torchvision (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max-pool 3/2."""
    b3 = apply_basic_conv(x, 192, 1, f"{name}.branch3x3_1", bn_momentum=m)
    b3 = apply_basic_conv(b3, 320, 3, f"{name}.branch3x3_2", strides=2, bn_momentum=m)
    b7 = apply_basic_conv(x, 192, 1, f"{name}.branch7x7x3_1", bn_momentum=m)
    b7 = apply_basic_conv(b7, 192, (1, 7), f"{name}.branch7x7x3_2", padding=(0, 3), bn_momentum=m)
    b7 = apply_basic_conv(b7, 192, (7, 1), f"{name}.branch7x7x3_3", padding=(3, 0), bn_momentum=m)
    b7 = apply_basic_conv(b7, 192, 3, f"{name}.branch7x7x3_4", strides=2, bn_momentum=m)
    bp = _max_pool_3x3_s2(x, f"{name}_branch_pool")
    return layers.Concatenate(name=f"{PREFIX}_{name}")([b3, b7, bp])


def apply_inception_e(x, name, m):
    """InceptionE block of torchvision (Mixed_7b, 7c): expanded 1x3/3x1 branches, avg-pool counting padded pixels."""
    b1 = apply_basic_conv(x, 320, 1, f"{name}.branch1x1", bn_momentum=m)
    b3 = apply_basic_conv(x, 384, 1, f"{name}.branch3x3_1", bn_momentum=m)
    b3 = layers.Concatenate(name=f"{PREFIX}_{name}_branch3x3")([
        apply_basic_conv(b3, 384, (1, 3), f"{name}.branch3x3_2a", padding=(0, 1), bn_momentum=m),
        apply_basic_conv(b3, 384, (3, 1), f"{name}.branch3x3_2b", padding=(1, 0), bn_momentum=m)])
    bd = apply_basic_conv(x, 448, 1, f"{name}.branch3x3dbl_1", bn_momentum=m)
    bd = apply_basic_conv(bd, 384, 3, f"{name}.branch3x3dbl_2", padding=1, bn_momentum=m)
    bd = layers.Concatenate(name=f"{PREFIX}_{name}_branch3x3dbl")([
        apply_basic_conv(bd, 384, (1, 3), f"{name}.branch3x3dbl_3a", padding=(0, 1), bn_momentum=m),
        apply_basic_conv(bd, 384, (3, 1), f"{name}.branch3x3dbl_3b", padding=(1, 0), bn_momentum=m)])
    bp = apply_basic_conv(_avg_pool_3x3(x, name), 192, 1, f"{name}.branch_pool", bn_momentum=m)
    return layers.Concatenate(name=f"{PREFIX}_{name}")([b1, b3, bd, bp])


def apply_inception_aux(x, classes=1000, bn_momentum=0.9):
    """InceptionAux of torchvision on Mixed_6e (17x17 at 299): avg-pool 5/3, 1x1 128, 5x5 768, GAP, fc.

    Args:
        x: KerasTensor. (B, 17, 17, 768) output of Mixed_6e (at a 299 px input).
        classes: int. Units of the fc layer; `0` stops before it. Defaults to `1000`.
        bn_momentum: float. Keras BatchNormalization momentum. Defaults to `0.9`.

    Returns:
        KerasTensor. (B, classes) aux logits, or the (B, 768) pooled features with `classes=0`.
    """
    x = layers.AveragePooling2D(5, strides=3, name=f"{PREFIX}_AuxLogits_pool")(x)
    x = apply_basic_conv(x, 128, 1, "AuxLogits.conv0", bn_momentum=bn_momentum)
    x = apply_basic_conv(x, 768, 5, "AuxLogits.conv1", bn_momentum=bn_momentum)
    x = layers.GlobalAveragePooling2D(name=f"{PREFIX}_AuxLogits_avg_pool")(x)
    if classes:
        x = layers.Dense(classes, name=f"{PREFIX}_AuxLogits_fc")(x)
    return x


@register_backbone(BackboneConfig(PREFIX, 299, "tf", 2048, f"{PREFIX}_Mixed_7c", False, 23_834_568,
                                  head_layers=True))
def inception_v3_tv(inputs, weights=None, include_top=False, bn_momentum=0.9, classes=1000, aux_logits=False,
                    **kwargs):
    """InceptionV3, torchvision layout (input >= 75 px; the auxiliary head needs about 299).

    Args:
        inputs: KerasTensor. (B, H, W, 3) scaled to [-1, 1].
        weights: unused: `tfflannel.models.classifier.build_classifier` loads weights after building.
            Defaults to `None`.
        include_top: bool. Append GAP -> Dropout(0.5) -> fc (`classes=0`: stop before fc). Defaults to `False`.
        bn_momentum: float. Keras BatchNormalization momentum (0.9 is PyTorch's 0.1). Defaults to `0.9`.
        classes: int. Units of the fc layer(s), main and auxiliary; `0` stops before them. Defaults to `1000`.
        aux_logits: bool. Also return the auxiliary head's output (on Mixed_6e). Defaults to `False`.
        **kwargs: ignored (options meant for other backbones, such as `impl`).

    Returns:
        KerasTensor. The (B, h, w, 2048) Mixed_7c feature map, or with `include_top` the (B, 2048) pooled
        features or (B, classes) logits; `[main, aux]` with `aux_logits`.
    """
    m = bn_momentum
    x = apply_basic_conv(inputs, 32, 3, "Conv2d_1a_3x3", strides=2, bn_momentum=m)
    x = apply_basic_conv(x, 32, 3, "Conv2d_2a_3x3", bn_momentum=m)
    x = apply_basic_conv(x, 64, 3, "Conv2d_2b_3x3", padding=1, bn_momentum=m)
    x = _max_pool_3x3_s2(x, "maxpool1")
    x = apply_basic_conv(x, 80, 1, "Conv2d_3b_1x1", bn_momentum=m)
    x = apply_basic_conv(x, 192, 3, "Conv2d_4a_3x3", bn_momentum=m)
    x = _max_pool_3x3_s2(x, "maxpool2")
    x = apply_inception_a(x, 32, "Mixed_5b", m)
    x = apply_inception_a(x, 64, "Mixed_5c", m)
    x = apply_inception_a(x, 64, "Mixed_5d", m)
    x = apply_inception_b(x, "Mixed_6a", m)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        x = apply_inception_c(x, c7, name, m)
    aux = apply_inception_aux(x, classes, m) if aux_logits else None
    x = apply_inception_d(x, "Mixed_7a", m)
    x = apply_inception_e(x, "Mixed_7b", m)
    x = apply_inception_e(x, "Mixed_7c", m)
    if include_top:
        x = layers.GlobalAveragePooling2D(name=f"{PREFIX}_avg_pool")(x)
        x = layers.Dropout(0.5, name=f"{PREFIX}_dropout")(x)
        if classes:
            x = layers.Dense(classes, name=f"{PREFIX}_fc")(x)
    return [x, aux] if aux_logits else x
