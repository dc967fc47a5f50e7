"""The whole inference pipeline as one TensorFlow graph, exported in TF Serving's layout.

raw image -> histogram equalisation + gamma -> letterbox -> lung segmentation ->
in-graph mask clean-up -> lung-fraction QC -> 1024x1024 masked image -> K
lung-centred patches (fixed seed) -> every base learner in one batched pass ->
vote / mean scores -> ensemble -> 4 probabilities.

In-graph approximations (documented in README): the mask clean-up is a 3x3
opening followed by a 5x5 closing at the segmenter's resolution instead of
"two largest components + fill holes" (core TensorFlow has no connected
components), and resizing uses TensorFlow's area/bilinear kernels instead of
OpenCV's, so masks and patches can differ by a few boundary pixels from the
`segment` cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

from tfflannel import CLASS_NAMES, DISCLAIMER
from tfflannel.errors import InputError
from tfflannel.models.fc_densenet import lung_class_indices
from tfflannel.patches.pipeline import crop_patches, sample_centres


def equalize_gamma_tf(image, gamma=0.5):
    """TensorFlow twin of `segmentation.preprocess.equalize_gamma` for (H, W) uint8."""
    flat = tf.reshape(tf.cast(image, tf.int32), [-1])
    hist = tf.math.bincount(flat, minlength=256, maxlength=256, dtype=tf.float64)
    cdf = tf.cumsum(hist)
    low = tf.gather(cdf, tf.reduce_min(flat))
    high = cdf[-1]
    valid = (cdf >= low) & (cdf > 0)
    span = high - low
    lut = tf.where(valid, (cdf - low) * 255.0 / tf.maximum(span, 1e-12), 0.0)
    lut = tf.where(span > 0, tf.pow(lut / 255.0, gamma) * 255.0, tf.zeros_like(lut))
    return tf.gather(tf.cast(lut, tf.float32), tf.cast(image, tf.int32))


def _morphology(mask, size, dilate):
    x = tf.cast(mask, tf.float32)[None, ..., None]
    if dilate:
        x = tf.nn.max_pool2d(x, size, 1, "SAME")
    else:
        x = -tf.nn.max_pool2d(-x, size, 1, "SAME")
    return x[0, ..., 0]


def clean_mask_tf(mask):
    """Opening (3x3) removes specks; closing (5x5) fills small holes."""
    opened = _morphology(_morphology(mask, 3, False), 3, True)
    return _morphology(_morphology(opened, 5, True), 5, False)


class InferencePipeline(tf.Module):
    """Segmenter + base learners (+ ensemble) with the pre- and post-processing in between."""

    def __init__(self, segmenter, learners, ensemble=None, k=100, seed=0, score="prob",
                 min_lung_fraction=0.08, max_lung_fraction=0.65, cache_size=1024):
        super().__init__(name="tfflannel_pipeline")
        self.segmenter = segmenter.model
        self.seg_size = int(segmenter.input_size)
        self.lung_classes = tf.constant(lung_class_indices(segmenter.classes), tf.int64)
        self.learners = [model for model, _ in learners]
        self.learner_info = [info for _, info in learners]
        self.ensemble = ensemble
        self.k, self.seed, self.score = int(k), int(seed), score
        self.bounds = (float(min_lung_fraction), float(max_lung_fraction))
        self.cache_size = int(cache_size)
        self.class_names = tf.constant(CLASS_NAMES)

    def _segment(self, image):
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        side = tf.maximum(height, width)
        equalized = equalize_gamma_tf(image[..., 0])
        square = tf.pad(equalized, [[0, side - height], [0, side - width]])[..., None]
        small = tf.image.resize(square, [self.seg_size, self.seg_size], method="area", antialias=True)
        probabilities = self.segmenter(tf.clip_by_value(small, 0.0, 255.0)[None] / 255.0, training=False)[0]
        lung = tf.reduce_any(tf.equal(tf.argmax(probabilities, axis=-1)[..., None], self.lung_classes), axis=-1)
        lung = clean_mask_tf(lung)
        full = tf.image.resize(lung[..., None], [side, side], method="nearest")[:height, :width, 0]
        return tf.cast(full > 0.5, tf.uint8)

    def _scores(self, image, big_image, big_mask):
        centres = sample_centres(big_mask, self.k, tf.constant([self.seed, 0], tf.int64))
        scores = []
        for model, info in zip(self.learners, self.learner_info, strict=True):
            size = int(info["input_size"])
            if info["kind"] == "global":
                resize = int(info["resize"])
                letterboxed = tf.image.resize_with_pad(tf.cast(image, tf.float32), resize, resize, method="area")
                offset = (resize - size) // 2
                batch = letterboxed[None, offset:offset + size, offset:offset + size]
            else:
                masked = big_image * tf.cast(big_mask[..., None], tf.float32)
                batch = crop_patches(masked[None], centres[None], size)
            probabilities = tf.cast(model(batch, training=False), tf.float32)
            votes = tf.reduce_mean(tf.one_hot(tf.argmax(probabilities, axis=-1), len(CLASS_NAMES)), axis=0)
            means = tf.reduce_mean(probabilities, axis=0)
            scores.append(tf.stack([votes, means]))
        return tf.stack(scores)        # (L, 2, C): vote fractions and mean probabilities

    def _one(self, image):
        image = tf.ensure_shape(image, [None, None, 1])
        mask = self._segment(image)
        fraction = tf.reduce_mean(tf.cast(mask, tf.float32))
        ok = (fraction >= self.bounds[0]) & (fraction <= self.bounds[1])
        mask = tf.where(ok, mask, tf.ones_like(mask))
        size = self.cache_size
        big_image = tf.image.resize_with_pad(tf.cast(image, tf.float32), size, size, method="area", antialias=True)
        big_mask = tf.cast(tf.image.resize_with_pad(mask[..., None], size, size, method="nearest")[..., 0], tf.uint8)
        scores = self._scores(image, big_image, big_mask)
        chosen = scores[:, 0] if self.score == "vote" else scores[:, 1]
        if self.ensemble is not None:
            probabilities = tf.cast(self.ensemble(tf.reshape(chosen, [1, -1]), training=False)[0], tf.float32)
        else:
            probabilities = tf.reduce_mean(scores[:, 1], axis=0)
        return probabilities, chosen, fraction, ok

    def _batch(self, images_fn, count):
        probabilities, learner_scores, fraction, ok = tf.map_fn(
            images_fn, tf.range(count),
            fn_output_signature=(tf.float32, tf.float32, tf.float32, tf.bool))
        return {"probabilities": probabilities,
                "label": tf.gather(self.class_names, tf.argmax(probabilities, axis=-1)),
                "learner_scores": learner_scores, "lung_fraction": fraction, "mask_ok": ok}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(self, images):
        """A batch of PNG/JPEG bytes (TF Serving's `{"b64": ...}` instances)."""
        def one(index):
            decoded = tf.io.decode_image(images[index], channels=1, dtype=tf.uint8, expand_animations=False)
            return self._one(decoded)
        return self._batch(one, tf.shape(images)[0])

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.uint8, name="images")])
    def serve_uint8(self, images):
        """A batch of grey uint8 images (B, H, W, 1) of any size."""
        return self._batch(lambda index: self._one(images[index]), tf.shape(images)[0])


def load_learner_runs(run_dirs):
    """(Keras model, RunInfo) of each base-learner run."""
    from tfflannel.learners.infer import read_run

    return [read_run(run_dir) for run_dir in run_dirs]


def build_pipeline(segmenter, run_dirs, ensemble_dir=None, k=100, seed=0, **qc):
    """An InferencePipeline from run directories (an ensemble's own learner order is enforced)."""
    import tfflannel.models.ensemble  # noqa: F401  (registers the ensemble layers for loading)
    from tfflannel.run_info import load_run_info

    ensemble, score = None, "prob"
    if ensemble_dir:
        info = load_run_info(ensemble_dir)
        expected = [str(p.resolve()) for p in info.run_paths(ensemble_dir)]
        given = [str(Path(r).resolve()) for r in run_dirs]
        if given != expected:
            raise InputError(f"{ensemble_dir} was trained on runs {expected} in this order; received {given}")
        ensemble = keras.saving.load_model(Path(ensemble_dir) / "model.keras", compile=False)
        score = info.score or "prob"
    return InferencePipeline(segmenter, load_learner_runs(run_dirs), ensemble, k=k, seed=seed, score=score, **qc)


def pipeline_from_config(config, segmenter, run_dirs, ensemble_dir=None):
    """`build_pipeline` with K and seed from `config.inference`, mask QC and cache size from `config.segmentation`."""
    seg = config.segmentation
    return build_pipeline(segmenter, run_dirs, ensemble_dir, k=config.inference.k, seed=config.inference.seed,
                          min_lung_fraction=seg.min_lung_fraction, max_lung_fraction=seg.max_lung_fraction,
                          cache_size=seg.cache_size)


def new_version_dir(export_dir, version):
    """EXPORT_DIR/<version>, refused if it exists: an export never overwrites one TF Serving may be serving."""
    target = Path(export_dir) / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another --version (TF Serving serves the highest)")
    return target


def export_pipeline(pipeline, export_dir, version=1):
    """Write EXPORT_DIR/<version>/ (saved_model.pb, variables/, assets.extra/) for TF Serving."""
    target = new_version_dir(export_dir, version)
    signatures = {"serving_default": pipeline.serve_encoded, "predict_uint8": pipeline.serve_uint8}
    tmp = Path(export_dir) / f".{version}.partial"
    tf.saved_model.save(pipeline, str(tmp), signatures=signatures)
    extra = tmp / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / "class_names.json").write_text(json.dumps(list(CLASS_NAMES)))
    (extra / "README.txt").write_text(
        f"tfflannel pipeline export. Classes in output order: {', '.join(CLASS_NAMES)}.\n"
        f"K={pipeline.k} patches, seed {pipeline.seed}, score '{pipeline.score}'.\n{DISCLAIMER}\n")
    tmp.rename(target)
    return target
