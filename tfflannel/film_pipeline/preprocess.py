"""Film pre-processing: histogram equalisation + gamma and the letterbox every stage shares.

Step 1 and 2 of the film pipeline (`tfflannel.film_pipeline`): `equalize_gamma_tf`, then `segmenter_input`
letterboxes (pad bottom/right to a square, then resize) to the segmenter's size.
"""

from __future__ import annotations

import tensorflow as tf


def equalize_gamma_tf(image, gamma=0.5):
    """Histogram equalisation then gamma, as the original `pre_processing` (tested against it).

    The CDF of the grey levels from the image minimum to its maximum is rescaled linearly to [0, 255]
    (levels below the minimum map to 0), then raised to `gamma`.

    Args:
        image: (H, W) integer tensor (uint8 or uint16).
        gamma: float. Defaults to `0.5`.

    Returns:
        (H, W) float32 tensor in [0, 255].
    """
    levels = tf.cast(image, tf.int32)
    flat = tf.reshape(levels, [-1])
    hist = tf.math.bincount(flat, minlength=tf.reduce_max(flat) + 1, dtype=tf.float64)
    cdf = tf.cumsum(hist)
    low = tf.gather(cdf, tf.reduce_min(flat))
    high = cdf[-1]
    valid = (cdf >= low) & (cdf > 0)
    span = high - low
    lut = tf.where(valid, (cdf - low) * 255.0 / tf.maximum(span, 1e-12), 0.0)
    # The table is computed in float64 (Grappler turns pow(x, 0.5) into sqrt in graphs, not eagerly): one float32
    # table whichever way the function runs.
    lut = tf.where(span > 0, tf.pow(tf.cast(tf.cast(lut, tf.float32), tf.float64) / 255.0, gamma) * 255.0,
                   tf.zeros_like(lut))
    return tf.gather(tf.cast(lut, tf.float32), levels)


def letterbox(image, size, method="linear"):
    """Pad (H, W, C) bottom/right to a square, then resize to (size, size, C), never stretching.

    `linear` (images): area averaging when shrinking (OpenCV's INTER_AREA), bilinear when enlarging;
    `nearest` for masks and label maps.

    Returns:
        (size, size, C) float32.
    """
    image = tf.cast(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.maximum(height, width)
    square = tf.pad(image, [[0, side - height], [0, side - width], [0, 0]])
    if method == "nearest":
        return tf.image.resize(square, [size, size], method="nearest")
    return tf.cond(side > size, lambda: tf.image.resize(square, [size, size], method="area"),
                   lambda: tf.image.resize(square, [size, size], method="bilinear"))


def to_uint8(image):
    """Round and clip a float tensor to uint8."""
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def segmenter_input(film, size):
    """(H, W) integer film -> (size, size, 1) float32 in [0, 1]: equalised, gamma, letterboxed."""
    return tf.clip_by_value(letterbox(equalize_gamma_tf(film)[..., None], size), 0.0, 255.0) / 255.0
