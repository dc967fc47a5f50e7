"""The registered backbone names as plain data, so `--help` and config validation need no Keras import.

`tests/learners_stage/test_backbones.py` checks that this list equals `list_backbones()`; a new
`@register_backbone` name goes here too.
"""

BACKBONE_NAMES = (
    "densenet121",
    "densenet161",
    "inception_v3",
    "mobilenet_v2",
    "resnet152",
    "resnet50",
    "resnext101_32x8d",
    "vgg19_bn",
)
"""Sorted names of every backbone in `tfflannel.models.backbones` (what `list_backbones()` returns)."""
