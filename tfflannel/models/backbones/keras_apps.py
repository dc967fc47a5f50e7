"""Backbones that keras.applications provides, built on the caller's input tensor."""

from __future__ import annotations

import keras

from tfflannel.models.backbones.registry import BackboneConfig, register_backbone


def _application(constructor, inputs, weights, include_top):
    model = constructor(include_top=include_top, weights=weights, input_tensor=inputs,
                        classifier_activation=None if include_top else "softmax")
    return model.output


@register_backbone(BackboneConfig("inception_v3", 299, "tf", 2048, "mixed10", True, 23_834_568))
def inception_v3(inputs, weights=None, include_top=False):
    """InceptionV3 (Szegedy et al. 2016), Keras layout.

    Keras' BN has no gamma (scale=False): 17,216 fewer parameters than torchvision.

    Args:
        inputs: KerasTensor. (B, H, W, 3) input, already scaled by the backbone's pre-processing.
        weights: None, `"imagenet"` (Keras' download) or the path of a Keras-applications ImageNet `.h5`
            file. Defaults to `None`.
        include_top: bool. Keep Keras' 1000-class classifier, returning logits (parameter-count checks).
            Defaults to `False`.

    Returns:
        KerasTensor. The (B, h, w, feature_dim) last feature map, or (B, 1000) logits with `include_top`.
    """
    return _application(keras.applications.InceptionV3, inputs, weights, include_top)


@register_backbone(BackboneConfig("resnet152", 224, "caffe", 2048, "conv5_block3_out", True, 60_192_808))
def resnet152(inputs, weights=None, include_top=False):
    """ResNet152 v1 (He et al. 2016), Keras layout.

    Stride in the first 1x1 conv and biased convs, unlike torchvision.

    Args:
        inputs: KerasTensor. (B, H, W, 3) input, already scaled by the backbone's pre-processing.
        weights: None, `"imagenet"` (Keras' download) or the path of a Keras-applications ImageNet `.h5`
            file. Defaults to `None`.
        include_top: bool. Keep Keras' 1000-class classifier, returning logits (parameter-count checks).
            Defaults to `False`.

    Returns:
        KerasTensor. The (B, h, w, feature_dim) last feature map, or (B, 1000) logits with `include_top`.
    """
    return _application(keras.applications.ResNet152, inputs, weights, include_top)


@register_backbone(BackboneConfig("resnet50", 224, "caffe", 2048, "conv5_block3_out", True, 25_557_032))
def resnet50(inputs, weights=None, include_top=False):
    """ResNet50 v1 (He et al. 2016), Keras layout.

    Args:
        inputs: KerasTensor. (B, H, W, 3) input, already scaled by the backbone's pre-processing.
        weights: None, `"imagenet"` (Keras' download) or the path of a Keras-applications ImageNet `.h5`
            file. Defaults to `None`.
        include_top: bool. Keep Keras' 1000-class classifier, returning logits (parameter-count checks).
            Defaults to `False`.

    Returns:
        KerasTensor. The (B, h, w, feature_dim) last feature map, or (B, 1000) logits with `include_top`.
    """
    return _application(keras.applications.ResNet50, inputs, weights, include_top)


@register_backbone(BackboneConfig("densenet121", 224, "torch", 1024, "relu", True, 7_978_856))
def densenet121(inputs, weights=None, include_top=False):
    """DenseNet121 (Huang et al. 2017), Keras applications.

    Args:
        inputs: KerasTensor. (B, H, W, 3) input, already scaled by the backbone's pre-processing.
        weights: None, `"imagenet"` (Keras' download) or the path of a Keras-applications ImageNet `.h5`
            file. Defaults to `None`.
        include_top: bool. Keep Keras' 1000-class classifier, returning logits (parameter-count checks).
            Defaults to `False`.

    Returns:
        KerasTensor. The (B, h, w, feature_dim) last feature map, or (B, 1000) logits with `include_top`.
    """
    return _application(keras.applications.DenseNet121, inputs, weights, include_top)


@register_backbone(BackboneConfig("mobilenet_v2", 224, "tf", 1280, "out_relu", True, 3_504_872))
def mobilenet_v2(inputs, weights=None, include_top=False):
    """MobileNetV2 (Sandler et al. 2018): the small backbone for tests and the demo.

    Args:
        inputs: KerasTensor. (B, H, W, 3) input, already scaled by the backbone's pre-processing.
        weights: None, `"imagenet"` (Keras' download) or the path of a Keras-applications ImageNet `.h5`
            file. Defaults to `None`.
        include_top: bool. Keep Keras' 1000-class classifier, returning logits (parameter-count checks).
            Defaults to `False`.

    Returns:
        KerasTensor. The (B, h, w, feature_dim) last feature map, or (B, 1000) logits with `include_top`.
    """
    return _application(keras.applications.MobileNetV2, inputs, weights, include_top)


_IMAGENET_STD = (0.229, 0.224, 0.225)


@register_backbone(BackboneConfig("efficientnet_b4", 380, "raw", 1792, "top_activation", True, 19_341_616))
def efficientnet_b4(inputs, weights=None, include_top=False):
    """EfficientNet-B4 (Tan & Le 2019), Keras applications: the backbone of AI-COVID (Bai, Wang et al. 2020).

    AI-COVID classified chest CT slices (its input was CT, not chest X-ray); here the same backbone is trained on
    chest X-rays, as a baseline in the Patched FLANNEL protocol, not a reproduction of AI-COVID.

    Keras' EfficientNet scales its input itself (0-255 RGB -> /255 -> ImageNet mean/std in a `Normalization`
    layer), hence the backbone's `raw` pre-processing. Keras' ImageNet file stores the standard deviations in
    that layer's `variance` and Keras adds a compensating rescaling only for `weights="imagenet"`; for a local
    copy of that file the stored variance is squared instead, which gives the same input scaling.

    Args:
        inputs: KerasTensor. (B, H, W, 3) RGB input in [0, 255].
        weights: None, `"imagenet"` (Keras' download) or the path of Keras' `efficientnetb4_notop.h5`.
            Defaults to `None`.
        include_top: bool. Keep Keras' 1000-class classifier, returning logits (parameter-count checks).
            Defaults to `False`.

    Returns:
        KerasTensor. The (B, h, w, 1792) last feature map, or (B, 1000) logits with `include_top`.
    """
    model = keras.applications.EfficientNetB4(include_top=include_top, weights=weights, input_tensor=inputs,
                                              classifier_activation=None if include_top else "softmax")
    if weights not in (None, "imagenet"):
        fix_stored_imagenet_std(model)
    return model.output


def fix_stored_imagenet_std(model):
    """Square the variance of a Keras EfficientNet input `Normalization` that holds the ImageNet std as variance.

    Args:
        model: keras.Model. A keras.applications EfficientNet with loaded weights.

    Returns:
        bool. Whether the variance was the ImageNet std (and is now its square).
    """
    import numpy as np

    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            mean, variance, *rest = layer.get_weights()
            if not np.allclose(variance, _IMAGENET_STD, atol=1e-4):
                return False
            layer.set_weights([mean, np.square(variance), *rest])
            layer.finalize_state()
            return True
    return False
