"""Base-learner classifiers: grey patch -> ImageNet scaling -> backbone -> GAP -> Dense(4) -> softmax.

The backbone is built on the model's own input tensor (never nested), so that
Grad-CAM can reach its last conv layer, and the ImageNet input scaling is a
layer of the model, identical in training, inference and export.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
from keras import layers, ops

from tfflannel import CLASS_NAMES
from tfflannel.errors import InputError
from tfflannel.models.backbones import backbone_config, create_backbone

log = logging.getLogger(__name__)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
PREPROCESS_MODES = ("tf", "torch", "caffe", "unit", "raw")


@keras.saving.register_keras_serializable(package="tfflannel")
class GrayToImageNet(layers.Layer):
    """(B, H, W, 1) grey values in [0, 255] -> (B, H, W, 3) scaled the way the backbone was trained.

    The grey channel is repeated into three channels and each is scaled as `grey * scale_c + offset_c`.

    Args:
        mode: str. `"tf"`: to [-1, 1]; `"torch"`: /255, then ImageNet mean/std per channel; `"caffe"`: the
            ImageNet BGR mean subtracted from the 0-255 values; `"unit"`: /255, to [0, 1] (COVID-Net);
            `"raw"`: the 0-255 values unchanged (Keras' EfficientNet scales its input itself). Defaults to
            `"torch"`.
        **kwargs: passed to `keras.layers.Layer` (`name`, `dtype`).

    Raises:
        ValueError: `mode` is not one of the three.
    """

    def __init__(self, mode="torch", **kwargs):
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"mode must be one of {PREPROCESS_MODES}. Received: mode={mode!r}.")
        self.mode = mode

    def call(self, inputs):
        """Scale a grey batch.

        Args:
            inputs: tensor. (B, H, W, 1) grey values in [0, 255], any numeric dtype.

        Returns:
            Tensor of shape (B, H, W, 3) in the layer's compute dtype.
        """
        # One broadcast multiply-add per output value: grey * scale_c + offset_c gives all three channels.
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            scale, offset = (1 / 127.5,) * 3, (-1.0,) * 3
        elif self.mode == "torch":
            scale = tuple(1.0 / (255.0 * s) for s in _IMAGENET_STD)
            offset = tuple(-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD, strict=True))
        elif self.mode == "caffe":
            scale, offset = (1.0,) * 3, tuple(-m for m in _CAFFE_MEAN_BGR)
        else:
            scale, offset = (1.0 / 255.0 if self.mode == "unit" else 1.0,) * 3, (0.0,) * 3
        return x * ops.convert_to_tensor(scale, dtype=x.dtype) + ops.convert_to_tensor(offset, dtype=x.dtype)

    def compute_output_shape(self, input_shape):
        """Return `input_shape` with the last (channel) dimension set to 3."""
        return (*input_shape[:-1], 3)

    def get_config(self):
        """Return the layer config, with `mode`."""
        return {**super().get_config(), "mode": self.mode}


def set_batchnorm_momentum(model, momentum):
    """Set the momentum of every BatchNormalization layer of `model` in place (keras.applications builds with 0.99).

    Args:
        model: keras.Model. Only its top-level layers are visited (backbones are built flat, not nested).
        momentum: float. Keras momentum (0.9 is PyTorch's 0.1).
    """
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum


HEADS = ("reference", "gap")


def _weights_source(backbone, config, weights):
    """Check `weights` for `backbone` and say where they go.

    Args:
        backbone: str. The backbone name.
        config: its `backbone_config`.
        weights: the `build_classifier` argument.

    Returns:
        (weights: str or None, pretrained: bool (a state dict or an import-weights file, loaded by name into
        the backbone), application_weights: `"imagenet"` or a Keras-applications `.h5` for keras.applications
        itself, else None).

    Raises:
        ValueError: ImageNet weights Keras does not have, or a Keras file for a torchvision-layout backbone.
        FileNotFoundError: a weights file that does not exist.
    """
    from tfflannel.models.state_dicts import is_state_dict_file
    from tfflannel.models.weights_files import check_weights_file
    from tfflannel.models.weights_import import reference_backbone_of

    weights = None if weights in (None, "none", "None") else str(weights)
    if weights == "imagenet" and not config.keras_weights:
        raise InputError(
            f"Keras has no ImageNet weights for {backbone!r}. "
            f"Pass torchvision's ImageNet weights of {backbone} "
            f"(a .pth or timm's .safetensors file, or the .weights.h5 that `import-weights` makes of it) with "
            f"--weights PATH, or use --weights none.")
    if weights is not None and weights != "imagenet" and not Path(weights).is_file():
        raise FileNotFoundError(
            f"{weights}: weights file not found (pass --weights none, imagenet or an existing file)")
    if weights is not None and weights != "imagenet":
        check_weights_file(weights)
    pretrained = weights is not None and (is_state_dict_file(weights) or (
        weights.endswith(".weights.h5") and reference_backbone_of(weights) is not None))
    # Keras' own ImageNet files (legacy `.h5`, not `.weights.h5`) go to keras.applications itself.
    keras_file = weights not in (None, "imagenet") and not pretrained and not weights.endswith(".weights.h5")
    if keras_file and not config.keras_weights:
        raise InputError(f"{weights}: {backbone!r} takes a torchvision .pth/.safetensors state dict, an "
                         f"import-weights .weights.h5 or a .weights.h5 saved from a tfflannel classifier")
    return weights, pretrained, weights if weights == "imagenet" or keras_file else None


def build_classifier(backbone="mobilenet_v2", input_size=None, num_classes=len(CLASS_NAMES), weights=None,
                     bn_momentum=0.9, dropout=0.0, head="reference", grouped_conv="split", aux_loss_weight=0.0):
    """Build a base learner.

    Args:
        backbone: str. A registered backbone name. Defaults to `"mobilenet_v2"`.
        input_size: int. Patch or crop side; defaults to the backbone's native size (299 for InceptionV3, else 224).
        num_classes: int. Defaults to 4.
        weights: None/"none"; "imagenet" (Keras' download, where Keras has the weights); a Keras-applications
            ImageNet `.h5` file (no top) for Keras backbones; for the torchvision-layout backbones a torchvision
            `.pth`/`.pt` or safetensors state dict, or an `import-weights` `.weights.h5` (backbone weights, new
            head); or a `.weights.h5` saved from a tfflannel classifier of the same backbone, head and input size.
        bn_momentum: float. BatchNormalization momentum (0.9 = PyTorch's 0.1). Defaults to `0.9`.
        dropout: float. Dropout before the Dense head. Defaults to `0.0`.
        head: str. `reference`: torchvision's classifier with only its last Linear replaced, as the paper did
            (VGG19-BN keeps its 25088-4096-4096 layers and needs 224 px; InceptionV3 keeps its dropout 0.5;
            the others are global average pooling); `gap`: global average pooling. Defaults to `"reference"`.
        grouped_conv: str. ResNeXt's grouped convolutions computed as `split` convolutions (fast on CPU) or
            one `grouped` convolution (fast on GPU); same variables. Defaults to `"split"`.
        aux_loss_weight: float. With `inception_v3_tv` and the `reference` head, a weight above 0 builds
            torchvision's auxiliary head (on Mixed_6e, needs 299 px, its last Linear replaced) and returns an
            `AuxiliaryLossModel` that trains on CE(main) + aux_loss_weight * CE(aux), as the paper's code did.
            Ignored for other backbones and heads. Defaults to `0.0`.

    Returns:
        keras.Model: (B, S, S, 1) grey values in [0, 255] -> (B, num_classes) softmax probabilities.
        Layers `head_logits` (pre-softmax) and the backbone's `last_conv` are reachable by name.
        With the auxiliary loss an `AuxiliaryLossModel`, whose `classifier` is that model.

    Raises:
        ValueError: an unknown head, weights that do not fit, ImageNet weights Keras does not have, or an
            auxiliary head on an input below 299 px.
        FileNotFoundError: a weights file that does not exist.
    """
    config = backbone_config(backbone)
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}. Received: head={head!r}.")
    size = input_size or config.input_size
    weights, pretrained, application_weights = _weights_source(backbone, config, weights)
    inputs = keras.Input((size, size, 1), name="patch")
    x = GrayToImageNet(config.preprocess, name="imagenet_scaling")(inputs)
    aux = aux_loss_weight > 0 and head == "reference" and backbone in AUX_HEAD_BACKBONES
    if aux and size < 299:
        raise InputError(f"{backbone}'s auxiliary head needs a 299 px input (got {size}); set aux_loss_weight: 0 "
                         f"to train without the auxiliary loss")
    x, aux_features = _backbone_features(backbone, config, x, head, aux, application_weights, grouped_conv)
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    logits = layers.Dense(num_classes, name="head_logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    model = keras.Model(inputs, outputs, name=f"{backbone}_classifier")
    if aux:
        aux_logits = layers.Dense(num_classes, name="head_aux_logits")(aux_features)
        aux_outputs = layers.Activation("softmax", dtype="float32", name="aux_probabilities")(aux_logits)
        model = AuxiliaryLossModel(model, aux_outputs, aux_loss_weight, name=f"{backbone}_aux_training")
    set_batchnorm_momentum(model.network if aux else model, bn_momentum)
    _load_classifier_weights(model, model.network if aux else model, backbone, weights, pretrained,
                             application_weights)
    return model


def _load_classifier_weights(model, network, backbone, weights, pretrained, application_weights):
    """Load what `_weights_source` found: backbone weights by name into `network`, or a whole tfflannel file.

    Keras-applications weights (`application_weights`) were loaded when the backbone was built.
    """
    if pretrained:
        from tfflannel.models.weights_import import load_backbone_weights

        for note in load_backbone_weights(network, backbone, weights):
            log.info("%s: %s", weights, note)
    elif weights is not None and application_weights is None:
        _load_local_weights(inference_model(model), weights)


def _backbone_features(backbone, config, x, head, aux, application_weights, grouped_conv):
    """The backbone on `x` up to the new head's input, and the auxiliary head's features (`aux`) or None.

    The input of the new head is torchvision's reference head without its last Linear (`reference` head of a
    backbone that has head layers, or `aux`), else global average pooling.

    Returns:
        (features tensor, auxiliary features or None).
    """
    options = {"impl": grouped_conv} if config.grouped_conv else {}
    if aux:
        return create_backbone(backbone, x, include_top=True, classes=0, aux_logits=True, **options)
    if head == "reference" and config.head_layers:
        return create_backbone(backbone, x, include_top=True, classes=0, **options), None
    return layers.GlobalAveragePooling2D(name="head_pool")(create_backbone(backbone, x, weights=application_weights,
                                                                            **options)), None


AUX_HEAD_BACKBONES = ("inception_v3_tv",)


class AuxiliaryLossModel(keras.Model):
    """Trains a classifier with an auxiliary head: loss = CE(main) + aux_loss_weight * CE(aux).

    This is how torchvision's InceptionV3 trains (the paper's code used 0.4).

    In training (`training=True`) the model returns `(probabilities, aux_probabilities)`; otherwise, like
    torchvision in eval mode, only the main classifier's probabilities, so validation and prediction see the
    one-output classifier. `classifier` (the same layers without the auxiliary head) is what gets saved for
    inference (`inference_model`); weight files of this model (resume checkpoints) also hold the auxiliary head.
    Compile it like the classifier (`SparseCategoricalCrossentropy` on the main output, metrics on the main
    output); the auxiliary term is added with the same reduction and distribution scaling.

    Args:
        classifier: keras.Model. The one-output classifier (input -> probabilities).
        aux_outputs: KerasTensor. The auxiliary head's probabilities, computed from `classifier`'s input
            through layers it shares with `classifier`.
        aux_loss_weight: float. Weight of the auxiliary cross-entropy.
        **kwargs: passed to `keras.Model`.
    """

    def __init__(self, classifier, aux_outputs, aux_loss_weight, **kwargs):
        super().__init__(**kwargs)
        self.classifier = classifier
        self.network = keras.Model(classifier.input, [classifier.output, aux_outputs],
                                   name=f"{classifier.name}_with_aux")
        self.aux_loss_weight = float(aux_loss_weight)
        self.aux_loss = keras.losses.SparseCategoricalCrossentropy(name="aux_loss")
        self.built = True                    # its layers are built: weights load (resume) before the first call

    def call(self, inputs, training=False):
        """Run the classifier, with the auxiliary head only in training.

        Args:
            inputs: tensor. (B, S, S, 1) grey values in [0, 255].
            training: bool. Defaults to `False`.

        Returns:
            In training a tuple `(probabilities, aux_probabilities)`, each (B, num_classes) float32; otherwise
            only `probabilities`.
        """
        if training:
            return tuple(self.network(inputs, training=True))
        return self.classifier(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Return the compiled loss on the main output plus `aux_loss_weight` times the auxiliary cross-entropy.

        Args:
            x: the input batch (unused by the losses). Defaults to `None`.
            y: tensor. (B,) integer labels.
            y_pred: tensor or tuple. The main probabilities, or `(probabilities, aux_probabilities)` in training;
                without the auxiliary output only the compiled loss is returned.
            sample_weight: tensor. Optional (B,) weights, used by both terms. Defaults to `None`.
            training: bool. Defaults to `True`.

        Returns:
            Scalar loss tensor.
        """
        main, aux = y_pred if isinstance(y_pred, (tuple, list)) else (y_pred, None)
        loss = super().compute_loss(x=x, y=y, y_pred=main, sample_weight=sample_weight, training=training)
        if aux is not None and self.aux_loss_weight:
            loss = loss + self.aux_loss_weight * self.aux_loss(y, aux, sample_weight)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Update the compiled metrics on the main output only (the auxiliary output is ignored).

        Args:
            x: the input batch.
            y: tensor. (B,) integer labels.
            y_pred: tensor or tuple. The main probabilities, or `(probabilities, aux_probabilities)`.
            sample_weight: tensor. Optional (B,) weights. Defaults to `None`.

        Returns:
            dict: metric name -> current value, as `keras.Model.compute_metrics`.
        """
        main = y_pred[0] if isinstance(y_pred, (tuple, list)) else y_pred
        return super().compute_metrics(x, y, main, sample_weight=sample_weight)


def inference_model(model):
    """The one-output classifier of `model` (an `AuxiliaryLossModel`'s `classifier`, else `model` itself)."""
    return model.classifier if isinstance(model, AuxiliaryLossModel) else model


def _load_local_weights(model, path):
    """Weights of a tfflannel classifier with the same backbone and input size (`model.save_weights`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: weights file not found (pass --weights none, imagenet or an existing .weights.h5)")
    try:
        model.load_weights(path)
    except ValueError as error:
        raise InputError(f"{path}: not the weights of a {model.name} with this input size ({error})") from None
