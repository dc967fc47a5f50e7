"""Backbone registry: a backbone is a name mapped to a builder (timm style).

Every other part of tfflannel looks backbones up by name:

    >>> from tfflannel.models.backbones import create_backbone, list_backbones
    >>> "inception_v3" in list_backbones()
    True

Importing this package registers the families in `keras_apps.py`, `covidnet.py`,
`densenet.py`, `inception_tv.py`, `resnext.py`, `vgg.py` and `test_cnn.py` (two tiny test models).
"""

from tfflannel.models.backbones import covidnet, densenet, inception_tv, keras_apps, resnext, test_cnn, vgg  # noqa: F401,E402
from tfflannel.models.backbones.registry import (  # noqa: F401
    BackboneConfig,
    backbone_config,
    create_backbone,
    list_backbones,
    register_backbone,
)
