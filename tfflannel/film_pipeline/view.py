"""The masked view the learners see: view settings, lung-fraction / confidence QC, conditions, global crop.

Step 4 of the film pipeline (`tfflannel.film_pipeline`): `masked_view` QCs the lung mask and builds the
letterboxed 1024x1024 view times the mask; `global_view` is the original-FLANNEL learner's input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import tensorflow as tf

from tfflannel.config import PATCH_INPUTS
from tfflannel.errors import InputError
from tfflannel.film_pipeline.masks import upsample_nearest
from tfflannel.film_pipeline.preprocess import equalize_gamma_tf, letterbox, to_uint8

CONDITIONS = ("normal", "lungs_only", "lungs_removed")
"""What a learner is shown (`apply_condition`): its usual input, only the lungs, or everything but the lungs."""
# Mask-confidence QC bounds at which they check nothing: off by default, and then not part of a cache key.
CONFIDENCE_QC_OFF = {"min_mask_confidence": 0.0, "max_flip_disagreement": 1.0}


@dataclass(frozen=True)
class ViewSettings:
    """What turns a film and its square lung mask into the cached / served 1024x1024 view.

    Args:
        size: int. Side of the masked view. Defaults to `1024`.
        min_lung_fraction: float. QC lower bound on the lung share of the film. Defaults to `0.08`.
        max_lung_fraction: float. QC upper bound. Defaults to `0.65`.
        input: str. `equalized` (histogram equalisation + gamma, as the original fed its learners) or `raw`
            (the grey film). Defaults to `"equalized"`.
        min_mask_confidence: float. QC lower bound on the mask confidence (`mask_confidence`); `0` checks
            nothing. Defaults to `0.0`.
        max_flip_disagreement: float. QC upper bound on the flip disagreement (`flip_disagreement`); `1` checks
            nothing. Defaults to `1.0`.
    """

    size: int = 1024
    min_lung_fraction: float = 0.08
    max_lung_fraction: float = 0.65
    input: str = "equalized"
    min_mask_confidence: float = 0.0
    max_flip_disagreement: float = 1.0

    def __post_init__(self):
        if self.input not in PATCH_INPUTS:
            raise InputError(f"patches.input must be one of {list(PATCH_INPUTS)}. Received: {self.input!r}.")
        for name in CONFIDENCE_QC_OFF:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"segmentation.{name} must be in [0, 1]. Received: {getattr(self, name)!r}.")

    @classmethod
    def from_config(cls, config):
        """From an `ExperimentConfig` (segmentation.cache_size, the QC bounds and patches.input)."""
        seg = config.segmentation
        return cls(seg.cache_size, seg.min_lung_fraction, seg.max_lung_fraction, config.patches.input,
                   seg.min_mask_confidence, seg.max_flip_disagreement)

    def key(self):
        """The settings as a dict for a cache key: the mask-confidence bounds only where they check something.

        So caches and runs made before those bounds existed, or with them off, keep their key.
        """
        fields = asdict(self)
        return {name: value for name, value in fields.items()
                if CONFIDENCE_QC_OFF.get(name, object()) != value}


def masked_view(film, square_mask, settings, equalized=None, confidence=None, disagreement=None,
                condition="lungs_only"):
    """QC the lung mask and build the masked, letterboxed view the learners see.

    The lung fraction is measured on the segmenter's square (the mask's own resolution) over the film's
    part of it; a film outside the QC bounds keeps its whole image (mask = the film's area). Where
    `settings` sets them, the mask confidence must also be >= `min_mask_confidence` and the flip
    disagreement <= `max_flip_disagreement` (`segment_quality`).

    Args:
        film: (H, W) integer tensor, the decoded film.
        square_mask: (S, S) bool, the cleaned mask on the segmenter's letterboxed square.
        settings: ViewSettings.
        equalized: optional (H, W) float32 `equalize_gamma_tf(film)`, when already computed.
        confidence: optional float32 scalar, the mask's `mask_confidence`. Needed if the settings bound it.
        disagreement: optional float32 scalar, the mask's `flip_disagreement`. Needed if the settings bound it.
        condition: str. `lungs_only` (the view the patch learners see), `lungs_removed` (everything but the lungs,
            for the shortcut audit) or `normal` (no mask applied). Defaults to `"lungs_only"`.

    Returns:
        dict: `image` (size, size) uint8 masked view, `mask` (size, size) uint8 in {0, 1}, `lung_fraction`
        float32, `mask_ok` bool.

    Raises:
        ValueError: the settings bound the confidence or disagreement and it was not given.
    """
    height, width = tf.shape(film)[0], tf.shape(film)[1]
    side = tf.cast(tf.maximum(height, width), tf.float32)
    seg_size = tf.shape(square_mask)[0]
    content_h = tf.cast(tf.round(tf.cast(height * seg_size, tf.float32) / side), tf.int32)
    content_w = tf.cast(tf.round(tf.cast(width * seg_size, tf.float32) / side), tf.int32)
    content = (tf.range(seg_size)[:, None] < content_h) & (tf.range(seg_size)[None, :] < content_w)
    lung = tf.cast(square_mask, tf.bool) & content
    fraction = tf.reduce_sum(tf.cast(lung, tf.float32)) / tf.cast(tf.maximum(content_h * content_w, 1), tf.float32)
    ok = (fraction >= settings.min_lung_fraction) & (fraction <= settings.max_lung_fraction)
    for value, name in ((confidence, "min_mask_confidence"), (disagreement, "max_flip_disagreement")):
        bound = getattr(settings, name)
        if bound == CONFIDENCE_QC_OFF[name]:
            continue
        if value is None:
            raise ValueError(f"masked_view: settings.{name}={bound} needs the mask's {name[4:]}; pass it")
        value = tf.cast(value, tf.float32)
        ok = ok & (value >= bound if name.startswith("min") else value <= bound)
    small = tf.cast(tf.where(ok, lung, content), tf.uint8)
    mask = upsample_nearest(small, settings.size)
    image = apply_condition(unmasked_view(film, settings, equalized), mask, condition)
    return {"image": image, "mask": mask, "lung_fraction": fraction, "mask_ok": ok}


def unmasked_view(film, settings, equalized=None):
    """The letterboxed (size, size) uint8 view of a film before the lung mask (equalised or raw per `settings`).

    Args:
        film: (H, W) integer tensor.
        settings: ViewSettings.
        equalized: optional (H, W) float32 `equalize_gamma_tf(film)`, when already computed.
    """
    if settings.input == "equalized":
        source = equalize_gamma_tf(film) if equalized is None else equalized
    else:
        source = tf.cast(film, tf.float32)
    return to_uint8(letterbox(source[..., None], settings.size)[..., 0])


def apply_condition(image, mask, condition):
    """An image under one of `CONDITIONS`: as is, zero outside the lung mask, or zero inside it.

    Args:
        image: (..., H, W[, 1]) tensor.
        mask: {0, 1} or bool tensor of the image's shape (or broadcastable to it): the lungs.
        condition: str. `normal`, `lungs_only` or `lungs_removed`.

    Returns:
        Tensor of the image's shape and dtype.

    Raises:
        ValueError: an unknown condition.
    """
    if condition not in CONDITIONS:
        raise ValueError(f"condition must be one of {list(CONDITIONS)}. Received: {condition!r}.")
    if condition == "normal":
        return image
    lung = tf.cast(tf.cast(mask, tf.bool), image.dtype)
    return image * (lung if condition == "lungs_only" else 1 - lung)


def global_view(film, resize, crop, square_mask=None, condition="normal"):
    """The original-FLANNEL learner's evaluation input: raw film letterboxed to `resize`, centre `crop`.

    Args:
        film: (H, W) integer tensor.
        resize: int. Side of the letterboxed film.
        crop: int. Side of the centre crop.
        square_mask: optional (S, S) lung mask on the film's letterboxed square (a masked view's `mask`), needed
            for a `condition` other than `normal`; resized (nearest) to `resize`.
        condition: str. One of `CONDITIONS` (`apply_condition`). Defaults to `"normal"`.

    Returns:
        (crop, crop, 1) float32 (uint8 values).
    """
    offset = (resize - crop) // 2
    image = to_uint8(letterbox(film[..., None], resize))
    if condition != "normal":
        lung = letterbox(tf.cast(square_mask, tf.uint8)[..., None], resize, "nearest")
        image = apply_condition(image, lung, condition)
    return tf.cast(image[offset:offset + crop, offset:offset + crop], tf.float32)


def global_view_mask(square_mask, resize, crop):
    """The lung mask of `global_view`'s crop: (crop, crop) uint8 from a mask on the letterboxed square."""
    offset = (resize - crop) // 2
    lung = to_uint8(letterbox(tf.cast(square_mask, tf.uint8)[..., None], resize, "nearest"))
    return lung[offset:offset + crop, offset:offset + crop, 0]
