"""VGG19 with batch normalisation (Simonyan & Zisserman 2015), torchvision `vgg19_bn` layout."""

from __future__ import annotations

from keras import layers

from tfflannel.models.backbones.registry import BackboneConfig, register_backbone
from tfflannel.models.batch_norm import BatchNormalization

VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


@register_backbone(BackboneConfig("vgg19_bn", 224, "torch", 512, "vgg19_bn_block5_conv4", False, 143_678_248,
                                  head_layers=True))
def vgg19_bn(inputs, weights=None, include_top=False, bn_momentum=0.9, classes=1000, **kwargs):
    """VGG19-BN: 16 conv3x3 (pad 1, with bias) + BN + ReLU, five max-pools 2/2 (floor, as torchvision).

    With `include_top`, torchvision's classifier: flatten 7x7x512 (torchvision's adaptive pool to 7x7
    is the identity at 224 px) -> 4096 -> 4096 -> `classes`; `classes=0` stops after the second 4096
    layer (the paper's head: only the last Linear is replaced).

    Args:
        inputs: KerasTensor. (B, H, W, 3) input scaled with the ImageNet mean/std.
        weights: unused: `tfflannel.models.classifier.build_classifier` loads weights after building.
            Defaults to `None`.
        include_top: bool. Append torchvision's classifier (see above). Defaults to `False`.
        bn_momentum: float. Keras BatchNormalization momentum (0.9 is PyTorch's 0.1). Defaults to `0.9`.
        classes: int. Units of the last Linear; `0` stops after the second 4096 layer. Defaults to `1000`.
        **kwargs: ignored (options meant for other backbones, such as `impl`).

    Returns:
        KerasTensor. The (B, H // 32, W // 32, 512) feature map after the fifth max-pool; with `include_top`
        the (B, 4096) features or (B, classes) logits (dropout 0.5 after each 4096 layer).

    Raises:
        ValueError: `include_top` on an input whose feature map is not 7x7 (input other than 224 px).
    """
    x = inputs
    block, conv = 1, 0
    for item in VGG19_CFG:
        if item == "M":
            x = layers.MaxPooling2D(2, strides=2, name=f"vgg19_bn_block{block}_pool")(x)
            block, conv = block + 1, 0
            continue
        conv += 1
        name = f"vgg19_bn_block{block}_conv{conv}"
        x = layers.Conv2D(item, 3, padding="same", name=name)(x)
        x = BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name=f"{name}_bn")(x)
        x = layers.Activation("relu", name=f"{name}_relu")(x)
    if include_top:
        if tuple(x.shape[1:3]) != (7, 7):
            raise ValueError(f"vgg19_bn's reference classifier needs a 7x7 feature map (input 224 px). Received: "
                             f"input {tuple(inputs.shape[1:3])} -> features {tuple(x.shape[1:3])}; use "
                             f"head: gap (config `head`) for other input sizes.")
        x = layers.Flatten(name="vgg19_bn_flatten")(x)
        x = layers.Dense(4096, activation="relu", name="vgg19_bn_fc1")(x)
        x = layers.Dropout(0.5, name="vgg19_bn_drop1")(x)
        x = layers.Dense(4096, activation="relu", name="vgg19_bn_fc2")(x)
        x = layers.Dropout(0.5, name="vgg19_bn_drop2")(x)
        if classes:
            x = layers.Dense(classes, name="vgg19_bn_predictions")(x)
    return x
