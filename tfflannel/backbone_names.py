"""The registered backbone names as plain data, so `--help` and config validation need no Keras import.

`tests/learners_stage/test_backbones.py` checks that this list equals `list_backbones()`; a new
`@register_backbone` name goes here too.
"""

BACKBONE_NAMES = (
    "covidnet_cxr",
    "densenet121",
    "densenet161",
    "efficientnet_b4",
    "inception_v3",
    "inception_v3_tv",
    "mobilenet_v2",
    "resnet152",
    "resnet152_tv",
    "resnet50",
    "resnext101_32x8d",
    "test_cnn",
    "test_cnn_bn",
    "vgg19_bn",
)
"""Sorted names of every backbone in `tfflannel.models.backbones` (what `list_backbones()` returns)."""

TORCHVISION_BACKBONE_NAMES = ("densenet161", "inception_v3_tv", "resnet152_tv", "resnext101_32x8d", "vgg19_bn")
"""The paper's five base learners (torchvision layout), whose torchvision state dicts `import-weights` maps.

The one definition of "the paper's five": `reproduce --backbones` defaults to it and
`tools/bench_train_step.py --backbone flannel` measures it. None of them has Keras ImageNet weights:
convert torchvision's files with `import-weights` and pass them with `reproduce --weights-dir`.
"""

BASELINE_BACKBONE_NAMES = ("covidnet_cxr", "efficientnet_b4")
"""The published COVID-19 models compared with FLANNEL (`configs/baselines.yaml`): COVID-Net (Wang, Lin & Wong 2020,
a CXR network) and AI-COVID's EfficientNet-B4 (Bai, Wang et al. 2020, applied to CT in its paper, here to CXR)."""

SCRATCH_BACKBONE_NAMES = ("covidnet_cxr",)
"""Backbones without ImageNet weights in any framework (the registry's `BackboneConfig.keras_weights` is False and no
torchvision file exists): they always train from scratch, and `reproduce --weights imagenet` / `--weights-dir`
give them `none` instead of refusing. `tests/learners_stage/test_backbones.py` ties this to the registry."""

SEGMENTER_NAMES = ("fcdn103", "fcdn56", "fcdn67", "fcdn_medium", "fcdn_small", "fcdn_test")
"""Sorted FC-DenseNet presets (`tfflannel.models.fc_densenet.FC_DENSENET_PRESETS`): the `train-seg --model` choices."""
