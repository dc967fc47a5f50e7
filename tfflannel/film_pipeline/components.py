"""Lung-mask clean-up: 8-connected components by label propagation, the two largest kept, holes filled.

Part of step 3 of the film pipeline (`tfflannel.film_pipeline`); `clean_lung_mask` is the clean-up every
stage uses, on (H, W) masks or (B, H, W) batches in one loop.
"""

from __future__ import annotations

import tensorflow as tf


def _as_batch(mask):
    """(H, W) or (B, H, W) -> ((B, H, W) float32 {0, 1}, whether a batch dimension was given)."""
    mask = tf.cast(tf.cast(mask, tf.bool), tf.float32)
    return (mask, True) if mask.shape.rank == 3 else (mask[None], False)


def _max_pool(x):
    return tf.nn.max_pool2d(x[..., None], 3, 1, "SAME")[..., 0]


def _run_max(values, inside):
    """Spread the maximum of `values` over every horizontal run of `inside` pixels in (B, H, W) at once.

    A run (4-connected pixels of one row) gets one id by a cumulative sum over its start pixels; one
    segment max per run then replaces many single-pixel propagation steps.
    """
    previous = tf.pad(inside, [[0, 0], [0, 0], [1, 0]])[:, :, :-1]
    starts = inside & tf.logical_not(previous)
    run = tf.reshape(tf.cumsum(tf.reshape(tf.cast(starts, tf.int32), [-1])), tf.shape(inside))
    run = tf.where(inside, run, 0)
    maxima = tf.math.unsorted_segment_max(tf.reshape(values, [-1]), tf.reshape(run, [-1]), tf.size(run) + 1)
    return tf.where(inside, tf.gather(maxima, run), values)


def _propagate(values, inside, diagonal):
    """Iterate row-run, column-run (and, with `diagonal`, 3x3) max propagation inside `inside` to a fixed point."""
    inside_t = tf.transpose(inside, [0, 2, 1])
    weight = tf.cast(inside, values.dtype)

    def body(values, _):
        new = _run_max(values, inside)
        new = tf.transpose(_run_max(tf.transpose(new, [0, 2, 1]), inside_t), [0, 2, 1])
        if diagonal:
            new = _max_pool(new) * weight
        return new, tf.reduce_any(tf.not_equal(new, values))

    values, _ = tf.while_loop(lambda values, changed: changed, body, [values, tf.constant(True)])
    return values


def label_components(mask):
    """8-connected component labels of (H, W) or (B, H, W) masks by iterative label propagation.

    Every foreground pixel starts with its own id (raster index + 1); the largest id spreads over each
    component, along whole row and column runs and through 3x3 max-pooling (the diagonal neighbours), until
    nothing changes. Exact for up to 2**24 pixels in all (float32 ids); batched masks share one loop.

    Returns:
        int32 of the mask's shape: 0 for background, one id per component.
    """
    foreground, batched = _as_batch(mask)
    ids = tf.reshape(tf.range(1, tf.size(foreground) + 1, dtype=tf.int32), tf.shape(foreground))
    labels = _propagate(tf.cast(ids, tf.float32) * foreground, foreground > 0, diagonal=True)
    labels = tf.cast(labels, tf.int32)
    return labels if batched else labels[0]


def keep_largest_components(mask, n=2):
    """Keep the `n` largest 8-connected components of (H, W) or (B, H, W) masks.

    Ties are broken towards the component whose last pixel in raster order comes first (its label).

    Returns:
        bool of the mask's shape.
    """
    foreground, batched = _as_batch(mask)
    labels = label_components(foreground)
    count, pixels = tf.shape(labels)[0], tf.size(labels[0])
    flat = tf.reshape(labels, [-1])
    sizes = tf.math.unsorted_segment_sum(tf.ones_like(flat), flat, count * pixels + 1)
    sizes = tf.reshape(sizes[1:], [count, pixels])               # label id - 1 = global raster index
    top = tf.math.top_k(sizes, k=tf.minimum(n, pixels))
    ids = top.indices + 1 + tf.range(count)[:, None] * pixels
    ids = tf.where(top.values > 0, ids, -1)
    kept = tf.reduce_any(tf.equal(labels[..., None], ids[:, None, None, :]), axis=-1)
    return kept if batched else kept[0]


def fill_holes(mask):
    """Fill the background regions of (H, W) or (B, H, W) masks not 4-connected to the border (as SciPy).

    Returns:
        bool of the mask's shape.
    """
    foreground, batched = _as_batch(mask)
    background = 1.0 - foreground
    height, width = tf.shape(background)[1], tf.shape(background)[2]
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    border = tf.cast((rows == 0) | (rows == height - 1) | (cols == 0) | (cols == width - 1), tf.float32)
    outside = _propagate(background * border, background > 0, diagonal=False)
    filled = tf.equal(outside, 0.0)
    return filled if batched else filled[0]


def clean_lung_mask(mask, components=2):
    """The two largest components, then holes filled: the mask every stage uses. (B,) H, W -> bool."""
    return fill_holes(keep_largest_components(mask, components))
