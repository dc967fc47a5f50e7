"""Base-learner classifiers: grey patch -> ImageNet scaling -> backbone -> GAP -> Dense(4) -> softmax.

The backbone is built on the model's own input tensor (never nested), so that
Grad-CAM can reach its last conv layer, and the ImageNet input scaling is a
layer of the model, identical in training, inference and export.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers, ops

from tfflannel import CLASS_NAMES
from tfflannel.errors import InputError
from tfflannel.models.backbones import backbone_config, create_backbone

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="tfflannel")
class GrayToImageNet(layers.Layer):
    """(B, H, W, 1) grey values in [0, 255] -> (B, H, W, 3) scaled the way the backbone was trained.

    Modes: `tf` ([-1, 1]), `torch` (/255 then ImageNet mean/std), `caffe` (BGR mean subtracted).
    """

    def __init__(self, mode="torch", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("tf", "torch", "caffe"):
            raise ValueError(f"mode must be 'tf', 'torch' or 'caffe'. Received: mode={mode!r}.")
        self.mode = mode

    def call(self, inputs):
        # One broadcast multiply-add per output value: grey * scale_c + offset_c gives all three channels.
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            scale, offset = (1 / 127.5,) * 3, (-1.0,) * 3
        elif self.mode == "torch":
            scale = tuple(1.0 / (255.0 * s) for s in _IMAGENET_STD)
            offset = tuple(-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD, strict=True))
        else:
            scale, offset = (1.0,) * 3, tuple(-m for m in _CAFFE_MEAN_BGR)
        return x * ops.convert_to_tensor(scale, dtype=x.dtype) + ops.convert_to_tensor(offset, dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def set_batchnorm_momentum(model, momentum):
    """Set every BatchNormalization's momentum (keras.applications builds with 0.99)."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum


def build_classifier(backbone="mobilenet_v2", input_size=None, num_classes=len(CLASS_NAMES), weights=None,
                     bn_momentum=0.9, dropout=0.0):
    """Build a base learner.

    Args:
        backbone: str. A registered backbone name. Defaults to `"mobilenet_v2"`.
        input_size: int. Patch or crop side; defaults to the backbone's native size (299 for InceptionV3, else 224).
        num_classes: int. Defaults to 4.
        weights: None/"none"; "imagenet" (Keras' download, where Keras has the weights); a Keras-applications
            ImageNet `.h5` file (no top) for Keras backbones; or a `.weights.h5` saved from a tfflannel classifier
            of the same backbone and input size (for example ImageNet weights converted from torchvision).
        bn_momentum: float. BatchNormalization momentum (0.9 = PyTorch's 0.1). Defaults to `0.9`.
        dropout: float. Dropout before the Dense head. Defaults to `0.0`.

    Returns:
        keras.Model: (B, S, S, 1) grey values in [0, 255] -> (B, num_classes) softmax probabilities.
        Layers `head_logits` (pre-softmax) and the backbone's `last_conv` are reachable by name.
    """
    config = backbone_config(backbone)
    size = input_size or config.input_size
    weights = None if weights in (None, "none", "None") else str(weights)
    if weights == "imagenet" and not config.keras_weights:
        raise InputError(
            f"Keras has no ImageNet weights for {backbone!r}. Convert the torchvision ImageNet weights of "
            f"{backbone} to a Keras `.weights.h5` for this architecture (layer names as in "
            f"tfflannel/models/backbones) and pass --weights PATH, or use --weights none.")
    inputs = keras.Input((size, size, 1), name="patch")
    x = GrayToImageNet(config.preprocess, name="imagenet_scaling")(inputs)
    # Keras' own ImageNet files (legacy `.h5`, not `.weights.h5`) go to keras.applications itself.
    keras_file = weights is not None and weights != "imagenet" and not weights.endswith(".weights.h5")
    if keras_file and not config.keras_weights:
        raise InputError(f"{weights}: {backbone!r} needs a `.weights.h5` file saved from a tfflannel classifier")
    application_weights = weights if weights == "imagenet" or keras_file else None
    features = create_backbone(backbone, x, weights=application_weights)
    x = layers.GlobalAveragePooling2D(name="head_pool")(features)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    logits = layers.Dense(num_classes, name="head_logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    model = keras.Model(inputs, outputs, name=f"{backbone}_classifier")
    set_batchnorm_momentum(model, bn_momentum)
    if weights is not None and application_weights is None:
        _load_local_weights(model, weights)
    return model


def _load_local_weights(model, path):
    """Weights of a tfflannel classifier with the same backbone and input size (`model.save_weights`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found (pass --weights none, imagenet or an existing .weights.h5)")
    try:
        model.load_weights(path)
    except ValueError as error:
        raise InputError(f"{path}: not the weights of a {model.name} with this input size ({error})") from None
