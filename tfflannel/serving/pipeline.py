"""The whole inference pipeline as one TensorFlow graph: what `export` saves and `predict --runs` runs.

Every step is a `tfflannel.film_pipeline` function, the same code `segment`,
`predict-base`, `predict --runs` and `explain` run: film -> histogram
equalisation + gamma -> letterbox -> lung segmentation -> mask clean-up (two
largest components, holes filled) -> lung-fraction QC -> 1024x1024 masked view
-> K lung-centred patches (fixed seed) -> every base learner in one batched
pass -> vote / mean scores -> ensemble -> 4 probabilities. No approximation:
for the same film the export serves what the cache and `predict-base` computed.
"""

from __future__ import annotations

import tensorflow as tf

from tfflannel import CLASS_NAMES
from tfflannel.data.io import image_limits
from tfflannel.film_pipeline import (
    ViewSettings,
    aggregate_scores,
    crop_patches,
    evaluation_centres,
    global_view,
    masked_view,
    segment_quality,
    segmenter_input,
)
from tfflannel.models.calibration import TemperatureScaling
from tfflannel.serving.encoded_guard import checked_encoded_images


class InferencePipeline(tf.Module):
    """Segmenter + base learners (+ ensemble) with the film pipeline's pre- and post-processing in between.

    Args:
        segmenter: `segmentation.inference.Segmenter`.
        learners: list of (keras.Model, run info dict with kind, input_size and, for global runs, resize).
        ensemble: keras.Model or None. Takes the learners' scores flattened (learner-major). Defaults to `None`.
        k: int. Patches per film (`inference.k`). Defaults to `100`.
        seed: int. Patch seed (`inference.seed`). Defaults to `0`.
        score: str. `prob` (mean probabilities) or `vote` (vote fractions) into the ensemble. Defaults to `"prob"`.
        view: ViewSettings. Defaults to `ViewSettings()`.
        temperature: float or None. The ensemble's fitted temperature, applied to its probabilities by
            `models.calibration.TemperatureScaling` (what `evaluate` applies); `None` applies none. Defaults to
            `None`.
        limits: dict or None. `max_megapixels` and `min_side` that `serving_default` enforces from each encoded
            image's header (`serving.encoded_guard`); `None` takes those in force (`data.io.image_limits`).
            Defaults to `None`.
    """

    def __init__(self, segmenter, learners, ensemble=None, k=100, seed=0, score="prob", view=None, temperature=None,
                 limits=None):
        super().__init__(name="tfflannel_pipeline")
        if int(k) < 1:
            raise ValueError(f"inference.k must be >= 1. Received: {k}.")
        self.segmenter = segmenter.model
        self.seg_size = int(segmenter.input_size)
        self.lung_classes = segmenter.lung_classes
        self.flip_tta = bool(segmenter.flip_tta)
        self.learners = [model for model, _ in learners]
        self.learner_info = [info for _, info in learners]
        self.ensemble = ensemble
        self.k, self.seed, self.score = int(k), int(seed), score
        self.view = view or ViewSettings()
        self.temperature = None if temperature is None else float(temperature)
        self.calibration = None if temperature is None else TemperatureScaling(temperature, name="temperature")
        limits = dict(image_limits(), **(limits or {}))
        self.max_megapixels, self.min_side = float(limits["max_megapixels"]), int(limits["min_side"])
        self.class_names = tf.constant(CLASS_NAMES)

    def views(self, film_fn, count):
        """Masked views of `count` films (`film_fn(i)` -> (H, W) uint8): images, masks (B, S, S) uint8, fraction, ok."""
        return self.views_and_quality(film_fn, count)[:4]

    def views_and_quality(self, film_fn, count):
        """Masked views of `count` films (`film_fn(i)` -> (H, W) uint8) and their masks' quality, as `segment` does.

        The segmenter runs on the films and on their mirrors (`film_pipeline.segment_quality`: the masks, flip
        TTA if the segmenter has it, the mask confidence and the flip disagreement).

        Returns:
            tuple: images (B, size, size) uint8, masks (B, size, size) uint8, lung fraction (B,) float32,
            mask_ok (B,) bool, mask confidence (B,) float32, flip disagreement (B,) float32.
        """
        inputs = tf.map_fn(lambda i: segmenter_input(film_fn(i), self.seg_size), tf.range(count),
                           fn_output_signature=tf.float32)
        outputs = self.segmenter(inputs, training=False)
        mirrored = self.segmenter(tf.reverse(inputs, axis=[2]), training=False)
        quality = segment_quality(outputs, mirrored, self.lung_classes, self.flip_tta)
        confidence, disagreement = quality["mask_confidence"], quality["flip_disagreement"]

        def finish(i):
            view = masked_view(film_fn(i), quality["masks"][i], self.view, None, confidence[i], disagreement[i])
            return view["image"], view["mask"], view["lung_fraction"], view["mask_ok"]

        images, masks, fraction, ok = tf.map_fn(finish, tf.range(count),
                                                fn_output_signature=(tf.uint8, tf.uint8, tf.float32, tf.bool))
        return images, masks, fraction, ok, confidence, disagreement

    def _learner_scores(self, film_fn, count, images, masks):
        centres = tf.map_fn(lambda m: evaluation_centres(m, self.k, self.seed), masks, fn_output_signature=tf.int32)
        scores = []
        for model, info in zip(self.learners, self.learner_info, strict=True):
            size = int(info["input_size"])
            if info["kind"] == "global":
                resize = int(info["resize"])
                batch = tf.map_fn(lambda i, r=resize, s=size: global_view(film_fn(i), r, s), tf.range(count),
                                  fn_output_signature=tf.TensorSpec([size, size, 1], tf.float32))
                per_film = 1
            else:
                batch = crop_patches(images[..., None], centres, size)
                per_film = self.k
            probabilities = tf.cast(model(batch, training=False), tf.float32)
            votes, means = aggregate_scores(tf.reshape(probabilities, [count, per_film, len(CLASS_NAMES)]))
            scores.append(tf.stack([votes, means], axis=1))
        return tf.stack(scores, axis=1)        # (B, L, 2, C): vote fractions and mean probabilities

    def _batch(self, film_fn, count):
        images, masks, fraction, ok, confidence, disagreement = self.views_and_quality(film_fn, count)
        scores = self._learner_scores(film_fn, count, images, masks)
        chosen = scores[:, :, 0] if self.score == "vote" else scores[:, :, 1]
        if self.ensemble is not None:
            flat = tf.reshape(chosen, [count, len(self.learners) * len(CLASS_NAMES)])
            probabilities = tf.cast(self.ensemble(flat, training=False), tf.float32)
            if self.calibration is not None:
                probabilities = self.calibration(probabilities)
        else:
            probabilities = tf.reduce_mean(scores[:, :, 1], axis=1)
        return {"probabilities": probabilities,
                "label": tf.gather(self.class_names, tf.argmax(probabilities, axis=-1)),
                "learner_scores": chosen, "lung_fraction": fraction, "mask_ok": ok,
                "mask_confidence": confidence, "flip_disagreement": disagreement}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(self, images):
        """A batch of PNG/JPEG bytes (TF Serving's `{"b64": ...}` instances), size-checked from their headers first."""
        images = checked_encoded_images(images, self.image_limits())

        def film(index):
            return tf.io.decode_image(images[index], channels=1, dtype=tf.uint8, expand_animations=False)[..., 0]
        return self._batch(film, tf.shape(images)[0])

    def image_limits(self):
        """The limits `serving_default` enforces: a dict with `max_megapixels` and `min_side`."""
        return {"max_megapixels": self.max_megapixels, "min_side": self.min_side}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8, name="images")])
    def serve_uint8(self, images):
        """A batch of grey uint8 images (B, H, W, 1) of any size."""
        return self._batch(lambda index: images[index, ..., 0], tf.shape(images)[0])


def load_learner_runs(run_dirs):
    """(Keras model, RunInfo) of each base-learner run."""
    from tfflannel.learners.infer import read_run

    return [read_run(run_dir) for run_dir in run_dirs]
