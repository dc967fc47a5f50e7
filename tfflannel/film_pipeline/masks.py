"""Segmenter output -> lung masks and their quality: flip TTA, lung classes, confidence, flip disagreement.

Step 3 of the film pipeline (`tfflannel.film_pipeline`): `lung_masks` (argmax -> lung classes ->
`clean_lung_mask`), `segment_quality` (the masks with their confidence and flip disagreement), and the
resizes of a square mask to the film (`film_mask`) or the view (`upsample_nearest`).
"""

from __future__ import annotations

import tensorflow as tf

from tfflannel.film_pipeline.components import clean_lung_mask


def flip_average(probabilities, flipped_probabilities):
    """Horizontal-flip test-time augmentation: the mean of the segmenter's output on a batch and on its mirror.

    Args:
        probabilities: (B, S, S, C) float tensor, the output on the inputs.
        flipped_probabilities: (B, S, S, C) float tensor, the output on the inputs mirrored left-right
            (not yet mirrored back).

    Returns:
        (B, S, S, C) float tensor.
    """
    return (tf.convert_to_tensor(probabilities) + tf.reverse(flipped_probabilities, axis=[2])) / 2.0


def lung_masks(probabilities, lung_classes, clean=True):
    """Segmenter output (B, S, S, C) -> cleaned (B, S, S) bool lung masks (union of the lung classes).

    Args:
        probabilities: (B, S, S, C) float tensor.
        lung_classes: sequence of int. Class indices that are lung.
        clean: bool. Keep the two largest components and fill holes (`clean_lung_mask`), as every stage does;
            `False` only to measure what the clean-up changes. Defaults to `True`.
    """
    predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    lung = tf.reduce_any(tf.equal(predicted[..., None], tf.constant(list(lung_classes), tf.int32)), axis=-1)
    return clean_lung_mask(lung) if clean else lung


def mask_confidence(probabilities, masks):
    """Mean max-probability of the segmenter's output inside each mask (0 for an empty mask).

    Args:
        probabilities: (B, S, S, C) float tensor, the output the masks were made from.
        masks: (B, S, S) bool or {0, 1} tensor.

    Returns:
        (B,) float32: the mean over the mask's pixels of max_c probabilities[..., c].
    """
    top = tf.reduce_max(tf.cast(probabilities, tf.float32), axis=-1)
    inside = tf.cast(tf.cast(masks, tf.bool), tf.float32)
    count = tf.reduce_sum(inside, axis=[1, 2])
    return tf.where(count > 0, tf.reduce_sum(top * inside, axis=[1, 2]) / tf.maximum(count, 1.0), 0.0)


def flip_disagreement(masks, other_masks):
    """Share of the union of two masks where they differ: |A xor B| / |A or B| = 1 - Jaccard(A, B); 0 if both empty.

    Args:
        masks: (B, S, S) bool or {0, 1} tensor.
        other_masks: (B, S, S) bool or {0, 1} tensor.

    Returns:
        (B,) float32 in [0, 1].
    """
    a, b = tf.cast(masks, tf.bool), tf.cast(other_masks, tf.bool)
    union = tf.reduce_sum(tf.cast(a | b, tf.float32), axis=[1, 2])
    differ = tf.reduce_sum(tf.cast(tf.math.logical_xor(a, b), tf.float32), axis=[1, 2])
    return tf.where(union > 0, differ / tf.maximum(union, 1.0), 0.0)


def segment_quality(probabilities, flipped_probabilities, lung_classes, flip_tta=False):
    """Lung masks and how sure the segmenter is of them, from its output on the films and on their mirrors.

    The one implementation `segment` (the cache) and the SavedModel export call. The masks are those every
    stage uses: `lung_masks` of the flip-averaged output (`flip_average`) with `flip_tta`, else of
    `probabilities`. Per film:

    - `mask_confidence`: `mask_confidence` of that output inside that mask (at the segmenter's resolution).
    - `flip_disagreement`: `flip_disagreement` of the argmax lung mask of `probabilities` and that of
      `flipped_probabilities` mirrored back, both before the clean-up: 1 - Jaccard of what the segmenter sees in
      a film and in its mirror (stray blobs count: they are its doubt too, and cleaning two more masks per film
      would cost more than the segmenter itself).

    The two passes are those flip TTA needs, so with `flip_tta` the numbers cost no extra model call.

    Args:
        probabilities: (B, S, S, C) float tensor, the segmenter's output on the inputs.
        flipped_probabilities: (B, S, S, C) float tensor, its output on the inputs mirrored left-right (not
            mirrored back).
        lung_classes: sequence of int. Class indices that are lung.
        flip_tta: bool. Masks from the flip-averaged output. Defaults to `False`.

    Returns:
        dict: `masks` (B, S, S) bool, `mask_confidence` (B,) float32, `flip_disagreement` (B,) float32.
    """
    probabilities = tf.cast(probabilities, tf.float32)
    flipped_probabilities = tf.cast(flipped_probabilities, tf.float32)
    used = flip_average(probabilities, flipped_probabilities) if flip_tta else probabilities
    masks = lung_masks(used, lung_classes)
    film = lung_masks(probabilities, lung_classes, clean=False)
    mirror = lung_masks(tf.reverse(flipped_probabilities, axis=[2]), lung_classes, clean=False)
    return {"masks": masks, "mask_confidence": mask_confidence(used, masks),
            "flip_disagreement": flip_disagreement(film, mirror)}


def lung_mask(probabilities, lung_classes):
    """One film's segmenter output (S, S, C) -> cleaned (S, S) bool lung mask (`lung_masks` of a batch of one)."""
    return lung_masks(probabilities[None], lung_classes)[0]


def film_mask(square_mask, height, width):
    """A mask on the letterboxed square -> (height, width) uint8 at the film's resolution (nearest)."""
    side = tf.maximum(height, width)
    full = tf.image.resize(tf.cast(square_mask, tf.uint8)[..., None], [side, side], method="nearest")
    return full[:height, :width, 0]


def upsample_nearest(mask, size):
    """(S, S) -> (size, size) nearest neighbour; a block repeat when `size` is a multiple of S (same result, faster)."""
    side = tf.shape(mask)[0]
    return tf.cond(tf.equal(size % side, 0),
                   lambda: tf.repeat(tf.repeat(mask, size // side, axis=0), size // side, axis=1),
                   lambda: tf.image.resize(mask[..., None], [size, size], method="nearest")[..., 0])
