"""COVID-Net (Wang, Lin & Wong, Sci. Rep. 10:19549, 2020), `covidnet_cxr`: a PEPX network for chest X-rays.

Built from the paper's description, not from its release (TensorFlow 1 checkpoints of a machine-designed
graph, no model code). What the paper fixes, and this module follows:

* the PEPX module: 1x1 first-stage projection -> 1x1 expansion -> 3x3 depthwise -> 1x1 second-stage
  projection -> 1x1 extension;
* the stage layout of its Fig. 2: a 7x7 stem convolution, then 3, 4, 6 and 3 PEPX modules
  (PEPX1.1-1.3, 2.1-2.4, 3.1-3.6, 4.1-4.3), the spatial size halving between stages;
* the long-range ("densely connected") links of Fig. 2: in each stage a 1x1 convolution of the stage input
  feeds every PEPX module of the stage, and every module's output feeds every later module of the stage
  (its input is the sum of those outputs), the stage's output being the sum of all of them;
* the head: fully connected 1024 -> 256 -> classes with softmax; 480 x 480 RGB input;
* the size: 11.75 M parameters and 7.50 G multiply-adds at 480 px (the paper's Table 1, "COVID-Net").

Where the paper leaves a choice open, this module chose (also in docs/backbones.md):

1. Channel widths. Fig. 2 gives none (the design came out of a machine-driven search and its widths vary
   per module). Chosen: stem 64; stage widths 128, 256, 512, 1024 (doubling at each halving, as ResNet);
   inside a PEPX module of width c: projection c/2, expansion 3c/4 (higher than the projection, different
   from the input, as the paper asks), depthwise 3x3 on 3c/4, second projection c/2, extension c. With the
   head below, these widths give 10,580,451 trainable parameters (3 classes) and 7.47 G multiply-adds at
   480 px: 10% under the published 11.75 M and 0.4% under 7.50 G (`tests/learners_stage/test_covidnet.py`).
   The totals are all the paper allows to check; the parameter gap is what the unpublished per-module widths
   of the searched design leave (a stage-4 width of 1120 instead of 1024 would match the parameters to 0.2%
   at +3% multiply-adds; the plain doubling was kept).
2. Down-sampling. Not drawn. Chosen: stem convolution 7x7 stride 2, then 2x2 max-pooling after the stem and
   between stages (480 -> 240 -> 120 -> 60 -> 30 -> 15).
3. Normalisation and activation. Not mentioned. Chosen: every convolution without bias, followed by batch
   normalisation and ReLU (the sums of the dense links are sums of ReLU outputs).
4. Flatten before the fully connected layers (Fig. 2). Replaced by global average pooling: flattening the
   15 x 15 x 1024 map would put 235 M weights into the first FC layer alone, 20x the published total, so
   the published count cannot include a flatten of the last map at these widths. The FC layers keep 1024
   and 256 units with ReLU (`include_top=True`, `classes=0` stops after the 256 layer: the `reference` head).
5. Input scaling. COVID-Net's own code divides by 255; so does this (`preprocess="unit"`). There are no
   ImageNet weights: it trains from scratch, as the paper's final model was trained on COVIDx (the paper
   initialised from ImageNet pre-training of the design; nothing of that is public).
"""

from __future__ import annotations

from keras import layers

from tfflannel.models.backbones.registry import BackboneConfig, register_backbone
from tfflannel.models.batch_norm import BatchNormalization

PREFIX = "covidnet_cxr"
STAGE_DEPTHS = (3, 4, 6, 3)
STAGE_WIDTHS = (128, 256, 512, 1024)
STEM_WIDTH = 64
HEAD_UNITS = (1024, 256)


def _conv_bn_relu(x, filters, kernel, bn_momentum, name, depthwise=False, strides=1):
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, padding="same", use_bias=False, name=f"{name}_dwconv")(x)
    else:
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = BatchNormalization(momentum=bn_momentum, epsilon=1e-3, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def apply_pepx(x, width, bn_momentum, name):
    """One PEPX module: projection -> expansion -> depthwise 3x3 -> projection -> extension, each conv-BN-ReLU.

    Args:
        x: KerasTensor. (B, H, W, C) input.
        width: int. Output channels c; the projections have c // 2 channels, the expansion 3 * c // 4.
        bn_momentum: float. Keras BatchNormalization momentum.
        name: str. Layer-name prefix.

    Returns:
        KerasTensor of shape (B, H, W, width).
    """
    x = _conv_bn_relu(x, width // 2, 1, bn_momentum, f"{name}_project1")
    x = _conv_bn_relu(x, 3 * width // 4, 1, bn_momentum, f"{name}_expand")
    x = _conv_bn_relu(x, None, 3, bn_momentum, f"{name}_depthwise", depthwise=True)
    x = _conv_bn_relu(x, width // 2, 1, bn_momentum, f"{name}_project2")
    return _conv_bn_relu(x, width, 1, bn_momentum, f"{name}_extend")


def apply_stage(x, width, depth, bn_momentum, name):
    """A densely connected stage of PEPX modules, joined by sums.

    A 1x1 link conv of the input feeds every PEPX module; each module sees the sum of the link and all earlier
    modules' outputs; the stage returns the sum of the link and every module's output.

    Args:
        x: KerasTensor. (B, H, W, C) stage input.
        width: int. Channels of every module and of the link.
        depth: int. PEPX modules in the stage.
        bn_momentum: float. Keras BatchNormalization momentum.
        name: str. Layer-name prefix (`<prefix>_stage<s>`).

    Returns:
        KerasTensor of shape (B, H, W, width): layer `<name>_sum`.
    """
    link = _conv_bn_relu(x, width, 1, bn_momentum, f"{name}_link")
    outputs = [apply_pepx(x, width, bn_momentum, f"{name}_pepx1")]
    for index in range(2, depth + 1):
        merged = layers.Add(name=f"{name}_pepx{index}_in")([link, *outputs])
        outputs.append(apply_pepx(merged, width, bn_momentum, f"{name}_pepx{index}"))
    return layers.Add(name=f"{name}_sum")([link, *outputs])


@register_backbone(BackboneConfig(PREFIX, 480, "unit", STAGE_WIDTHS[-1], f"{PREFIX}_stage4_sum", False, 0,
                                  head_layers=True, scratch=True))
def covidnet_cxr(inputs, weights=None, include_top=False, bn_momentum=0.9, classes=3, **kwargs):
    """COVID-Net for chest X-rays (module docstring: what the paper fixes and what was chosen).

    Args:
        inputs: KerasTensor. (B, H, W, 3) input scaled to [0, 1]; H, W >= 32 (480 native).
        weights: unused (there are no ImageNet weights; `build_classifier` loads tfflannel weight files).
            Defaults to `None`.
        include_top: bool. Append global average pooling -> FC 1024 -> FC 256 (ReLU) -> FC `classes`.
            Defaults to `False`.
        bn_momentum: float. Keras BatchNormalization momentum. Defaults to `0.9`.
        classes: int. Units of the last FC layer (the paper's 3: normal, pneumonia, COVID-19); `0` stops after
            the 256 layer. Defaults to `3`.
        **kwargs: ignored (options meant for other backbones, such as `impl`).

    Returns:
        KerasTensor. The (B, H / 32, W / 32, 1024) sum of stage 4 (layer `covidnet_cxr_stage4_sum`); with
        `include_top` the (B, 256) features or (B, classes) logits.
    """
    x = _conv_bn_relu(inputs, STEM_WIDTH, 7, bn_momentum, f"{PREFIX}_stem", strides=2)
    x = layers.MaxPooling2D(2, name=f"{PREFIX}_stem_pool")(x)
    for stage, (width, depth) in enumerate(zip(STAGE_WIDTHS, STAGE_DEPTHS, strict=True), start=1):
        if stage > 1:
            x = layers.MaxPooling2D(2, name=f"{PREFIX}_stage{stage}_pool")(x)
        x = apply_stage(x, width, depth, bn_momentum, f"{PREFIX}_stage{stage}")
    if include_top:
        x = layers.GlobalAveragePooling2D(name=f"{PREFIX}_avg_pool")(x)
        for index, units in enumerate(HEAD_UNITS, start=1):
            x = layers.Dense(units, activation="relu", name=f"{PREFIX}_fc{index}")(x)
        if classes:
            x = layers.Dense(classes, name=f"{PREFIX}_predictions")(x)
    return x
