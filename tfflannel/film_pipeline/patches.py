"""Patches of a view and their scores: fixed, seeded lung-centred positions, one crop call, vote/mean scores.

Steps 5 and 6 of the film pipeline (`tfflannel.film_pipeline`).
"""

from __future__ import annotations

import tensorflow as tf


def lung_bbox(mask):
    """(ymin, xmin, ymax, xmax) int64 of an (H, W) mask's foreground, exclusive max; zeros if empty."""
    rows = tf.where(tf.reduce_any(mask > 0, axis=1))[:, 0]
    cols = tf.where(tf.reduce_any(mask > 0, axis=0))[:, 0]
    return tf.cond(tf.size(rows) > 0,
                   lambda: tf.stack([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]),
                   lambda: tf.zeros([4], tf.int64))


def sample_centres(mask, k, seed):
    """(k, 2) int32 lung-pixel centres drawn jointly with a stateless RNG; image centre if no lung."""
    coords = tf.cast(tf.where(mask > 0), tf.int32)
    count = tf.shape(coords)[0]
    index = tf.random.stateless_uniform([k], seed=seed, minval=0, maxval=tf.maximum(count, 1), dtype=tf.int32)
    centre = tf.stack([tf.shape(mask)[0] // 2, tf.shape(mask)[1] // 2])
    return tf.cond(count > 0, lambda: tf.gather(coords, index), lambda: tf.tile(centre[None], [k, 1]))


def evaluation_centres(mask, k, seed):
    """The fixed evaluation patch centres of one view: a function of (mask, K, seed) only.

    Used by predict-base's tf.data pipeline, training's validation, `explain` and the export, so the same
    seed gives the same positions everywhere.

    Args:
        mask: (H, W) view mask.
        k: int. Number of patches.
        seed: int or int64 scalar tensor. `inference.seed`.

    Returns:
        (k, 2) int32 (row, col).
    """
    return sample_centres(mask, k, tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)]))


def crop_patches(images, centres, size):
    """Cut every centre's patch of every image in one `crop_and_resize` call.

    Args:
        images: (B, H, W, 1) tensor.
        centres: (B, K, 2) int32 (row, col).
        size: int. Patch side.

    Returns:
        (B * K, size, size, 1) float32, zero where a patch leaves the image; patch
        (b, k) is row b * K + k.
    """
    shape = tf.shape(images)
    height, width = tf.cast(shape[1] - 1, tf.float32), tf.cast(shape[2] - 1, tf.float32)
    batch, k = tf.shape(centres)[0], tf.shape(centres)[1]
    flat = tf.cast(tf.reshape(centres, [-1, 2]), tf.float32)
    top = flat[:, 0] - float(size // 2)
    left = flat[:, 1] - float(size // 2)
    boxes = tf.stack([top / height, left / width, (top + size - 1) / height, (left + size - 1) / width], axis=1)
    box_indices = tf.repeat(tf.range(batch), k)
    # Nearest sampling at exact pixel positions: a crop, never a resize; outside the image -> 0.
    return tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, box_indices, [size, size],
                                    method="nearest", extrapolation_value=0.0)


def aggregate_scores(probabilities):
    """(B, K, C) patch probabilities -> (vote fractions (B, C), mean probabilities (B, C)), float32."""
    probabilities = tf.cast(probabilities, tf.float32)
    classes = tf.shape(probabilities)[-1]
    votes = tf.reduce_mean(tf.one_hot(tf.argmax(probabilities, axis=-1), classes, dtype=tf.float32), axis=1)
    return votes, tf.reduce_mean(probabilities, axis=1)
