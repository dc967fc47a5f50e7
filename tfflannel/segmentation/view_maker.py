"""Films -> cache views with a segmenter, batched: the film pipeline's functions, compiled once per process.

`segment` (`segmentation.cache`) and `audit` make their masked views with it.
"""

from __future__ import annotations

import tensorflow as tf

from tfflannel.film_pipeline import lung_bbox, masked_view, segment_quality


class ViewMaker:
    """Films -> cache views with a segmenter, batched: the film pipeline's functions, compiled once."""

    def __init__(self, segmenter, view_settings):
        self.segmenter, self.settings = segmenter, view_settings
        # One trace with unknown film sizes, as in the export's signatures: a graph specialised to one film's shape
        # may be rewritten differently by Grappler (e.g. a division by a folded constant) and differ by an ulp.
        film, grey, square = (tf.TensorSpec([None, None], dtype) for dtype in (tf.uint8, tf.float32, tf.bool))
        scalar = tf.TensorSpec([], tf.float32)
        self._prepare = tf.function(segmenter.prepare, input_signature=[film])
        # XLA fuses the clean-up's integer/max loops (3x faster on a CPU); its masks are exact, so identical
        # to the export's un-compiled graph (tested).
        self._quality = tf.function(
            lambda probs, flipped: segment_quality(probs, flipped, segmenter.lung_classes, segmenter.flip_tta),
            jit_compile=True)
        self._view = tf.function(self._view_one, input_signature=[film, grey, square, scalar, scalar])

    def _view_one(self, film, equalized, square_mask, confidence, disagreement):
        view = masked_view(film, square_mask, self.settings, equalized, confidence, disagreement)
        view["lung_bbox"] = lung_bbox(view["mask"])
        view["mask_confidence"], view["flip_disagreement"] = confidence, disagreement
        return view

    def views(self, films, batch_size=8):
        """(H, W) uint8 films -> list of dicts of NumPy values.

        Keys: image, mask, lung_bbox, lung_fraction, mask_ok, mask_confidence, flip_disagreement. The segmenter
        runs on each batch and on its mirror (`Segmenter.outputs`): the passes flip TTA needs anyway.
        """
        out = []
        for start in range(0, len(films), batch_size):
            chunk = films[start:start + batch_size]
            prepared = [self._prepare(tf.constant(film)) for film in chunk]
            inputs = tf.stack([p[0] for p in prepared])
            inputs = tf.pad(inputs, [[0, batch_size - len(chunk)], [0, 0], [0, 0], [0, 0]])   # one compiled shape
            quality = self._quality(*self.segmenter.outputs(inputs))
            for i, (film, (_, equalized)) in enumerate(zip(chunk, prepared, strict=True)):
                view = self._view(tf.constant(film), equalized, quality["masks"][i], quality["mask_confidence"][i],
                                  quality["flip_disagreement"][i])
                out.append({k: v.numpy() for k, v in view.items()})
        return out



def view_maker(segmenter, view_settings):
    """The `ViewMaker` of a segmenter and view settings, made (and traced) once per process."""
    makers = segmenter.__dict__.setdefault("_view_makers", {})
    if view_settings not in makers:
        makers[view_settings] = ViewMaker(segmenter, view_settings)
    return makers[view_settings]

