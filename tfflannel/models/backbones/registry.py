"""The registry and the per-backbone config (input size, pre-processing, last conv layer)."""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

_REGISTRY = {}


@dataclass(frozen=True)
class BackboneConfig:
    """What the rest of the pipeline needs to know about a backbone.

    Attributes:
        name: str. Registry name.
        input_size: int. Native input side (224; InceptionV3 299, EfficientNet-B4 380, COVID-Net 480).
        preprocess: str. Input scaling: `torch` (/255, ImageNet mean/std), `caffe` (BGR, mean), `tf` ([-1, 1]),
            `unit` ([0, 1]) or `raw` (0-255: the backbone scales its input itself).
        feature_dim: int. Channels of the final feature map.
        last_conv: str. Name of the last conv-like layer (Grad-CAM target).
        keras_weights: bool. Whether Keras can download ImageNet weights for it.
        reference_params: int. torchvision's parameter count with a 1000-class head (0: no torchvision model).
        head_layers: bool. The reference classifier has layers before its last Linear (VGG's 4096-4096,
            InceptionV3's dropout); the builder returns them with `include_top=True, classes=0`.
        grouped_conv: bool. The builder takes `impl` (`split` | `grouped`) for its grouped convolutions.
        scratch: bool. No ImageNet weights exist for it in any framework: it always trains from scratch
            (`reproduce --weights imagenet` / `--weights-dir` give it `none`).
    """

    name: str
    input_size: int
    preprocess: str
    feature_dim: int
    last_conv: str
    keras_weights: bool = False
    reference_params: int = 0
    head_layers: bool = False
    grouped_conv: bool = False
    scratch: bool = False


def register_backbone(config):
    """Decorator: register `builder(inputs, weights=None, include_top=False, **kwargs) -> features`."""

    def decorate(builder):
        if config.name in _REGISTRY:
            raise KeyError(f"backbone {config.name!r} is registered twice")
        _REGISTRY[config.name] = (builder, config)
        return builder

    return decorate


def _lookup(name):
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown backbone {name!r}.{hint} Registered: {sorted(_REGISTRY)}.")
    return _REGISTRY[name]


def list_backbones(pattern="*"):
    """Registered backbone names matching a glob pattern, sorted."""
    return sorted(name for name in _REGISTRY if fnmatch.fnmatch(name, pattern))


def backbone_config(name):
    """The BackboneConfig of a registered backbone."""
    return _lookup(name)[1]


def create_backbone(name, inputs, weights=None, include_top=False, **kwargs):
    """Build backbone `name` on the caller's input tensor (flat graph, no nested model).

    Args:
        name: str. A registered name.
        inputs: KerasTensor. RGB float input already scaled by the backbone's pre-processing.
        weights: None, "imagenet" or a path (see `tfflannel.models.classifier`).
        include_top: bool. Append the reference 1000-class classifier (parameter-count checks). Defaults to `False`.
        **kwargs: passed to the builder (`bn_momentum`, `classes`, `impl`, `aux_logits`, where it takes them).

    Returns:
        KerasTensor. The final feature map (B, h, w, feature_dim), or logits with `include_top`.
    """
    builder, _ = _lookup(name)
    return builder(inputs, weights=weights, include_top=include_top, **kwargs)
