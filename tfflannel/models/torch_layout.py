"""Which torchvision module each Keras layer of a torchvision-layout backbone is, by name, per family.

`MODULE_NAMES[backbone](keras_layer_name)` gives the torch module path (`features.denseblock1.denselayer2.conv1`)
or None for a layer torch does not have (a new head, the input scaling); `weights_import` maps state dicts
with it. `FINAL_LINEARS` are the Linear layers a classifier replaces, `TIMM_ALIASES` timm's names for
torchvision's modules.
"""

from __future__ import annotations

import re

from tfflannel.errors import InputError

# The Linear layers a classifier replaces (its head starts new) and timm's names for torchvision's.
FINAL_LINEARS = {"densenet161": ("classifier",), "resnext101_32x8d": ("fc",), "resnet152_tv": ("fc",),
                 "vgg19_bn": ("classifier.6",), "inception_v3_tv": ("fc", "AuxLogits.fc")}
TIMM_ALIASES = {"vgg19_bn": {"pre_logits.fc1": "classifier.0", "pre_logits.fc2": "classifier.3",
                             "head.fc": "classifier.6"}}


def _densenet_module(name):
    rules = ((r"densenet161_stem_conv", "features.conv0"), (r"densenet161_stem_bn", "features.norm0"),
             (r"densenet161_block(\d+)_layer(\d+)_bn([12])", r"features.denseblock\1.denselayer\2.norm\3"),
             (r"densenet161_block(\d+)_layer(\d+)_conv([12])", r"features.denseblock\1.denselayer\2.conv\3"),
             (r"densenet161_transition(\d+)_bn", r"features.transition\1.norm"),
             (r"densenet161_transition(\d+)_conv", r"features.transition\1.conv"),
             (r"densenet161_final_bn", "features.norm5"), (r"densenet161_classifier", "classifier"))
    return _first_match(name, rules)


def _resnet_module(prefix):
    def module(name):
        match = re.fullmatch(rf"{prefix}_stage(\d)_block(\d+)_(conv\d|bn\d|down_conv|down_bn)", name)
        if match:
            stage, block, part = match.groups()
            part = {"down_conv": "downsample.0", "down_bn": "downsample.1"}.get(part, part)
            return f"layer{stage}.{int(block) - 1}.{part}"
        return {f"{prefix}_stem_conv": "conv1", f"{prefix}_stem_bn": "bn1", f"{prefix}_fc": "fc"}.get(name)

    return module


def _vgg_module(name):
    from tfflannel.models.backbones.vgg import VGG19_CFG

    table, index, block, conv = {}, 0, 1, 0
    for item in VGG19_CFG:
        if item == "M":
            index, block, conv = index + 1, block + 1, 0
            continue
        conv += 1
        table[f"vgg19_bn_block{block}_conv{conv}"] = f"features.{index}"
        table[f"vgg19_bn_block{block}_conv{conv}_bn"] = f"features.{index + 1}"
        index += 3
    table.update({"vgg19_bn_fc1": "classifier.0", "vgg19_bn_fc2": "classifier.3",
                  "vgg19_bn_predictions": "classifier.6"})
    return table.get(name)


def _inception_module(name):
    rules = ((r"inception_v3_tv_(Conv2d_\w+)_(conv|bn)", r"\1.\2"),
             (r"inception_v3_tv_(Mixed_\d[a-e])_(branch\w+)_(conv|bn)", r"\1.\2.\3"),
             (r"inception_v3_tv_AuxLogits_(conv\d)_(conv|bn)", r"AuxLogits.\1.\2"),
             (r"inception_v3_tv_AuxLogits_fc", "AuxLogits.fc"), (r"inception_v3_tv_fc", "fc"))
    return _first_match(name, rules)


def _first_match(name, rules):
    for pattern, replacement in rules:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


MODULE_NAMES = {"densenet161": _densenet_module, "resnext101_32x8d": _resnet_module("resnext101_32x8d"),
                "resnet152_tv": _resnet_module("resnet152_tv"), "vgg19_bn": _vgg_module,
                "inception_v3_tv": _inception_module}


def importable_backbones():
    """Backbones whose torchvision state dicts `import-weights` maps (the torchvision-layout ones), sorted."""
    return sorted(MODULE_NAMES)


def check_importable(backbone):
    """Raise InputError unless `backbone` is one of `importable_backbones()` (the message says what to use)."""
    if backbone not in MODULE_NAMES:
        raise InputError(f"import-weights maps torchvision state dicts onto the torchvision-layout backbones "
                         f"{importable_backbones()}. Received: backbone={backbone!r}. Keras-applications "
                         f"backbones take Keras' own ImageNet files (--weights imagenet or a Keras .h5).")


def apply_timm_aliases(backbone, state):
    """A state dict with timm's module names renamed to torchvision's (`TIMM_ALIASES`) for `backbone`."""
    aliases = TIMM_ALIASES.get(backbone, {})
    out = {}
    for name, value in state.items():
        module, _, param = name.rpartition(".")
        out[f"{aliases.get(module, module)}.{param}"] = value
    return out
