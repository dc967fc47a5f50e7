"""Segmenter training inputs, made by the film pipeline's own functions (so training sees what inference sees).

The original (Patched FLANNEL / Oh-Park-Ye) equalises the histogram, applies
gamma 0.5 and feeds 256x256 images; `film_pipeline.segmenter_input` does the
same, letterboxing to a square (pad bottom/right, never stretch) and scaling to
[0, 1]. Label maps are letterboxed the same way with nearest-neighbour sampling.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfflannel.film_pipeline import letterbox, segmenter_input

_segmenter_input = tf.function(segmenter_input, reduce_retracing=True)
_letterbox = tf.function(letterbox, reduce_retracing=True)


def preprocess_for_segmentation(image, size=256):
    """(H, W) integer film -> (size, size, 1) float32 in [0, 1], exactly the segmenter's inference input."""
    return _segmenter_input(tf.constant(image), size).numpy()


def resize_label_map(labels, size):
    """Letterbox an integer (H, W) label map (or binary mask) to (size, size) uint8, nearest neighbour."""
    square = _letterbox(tf.constant(np.asarray(labels, np.uint8)[..., None]), size, "nearest")
    return square.numpy()[..., 0].astype(np.uint8)
