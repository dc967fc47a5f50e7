"""The whole inference pipeline as one TensorFlow graph, exported in TF Serving's layout.

Every step is a `tfflannel.film_pipeline` function, the same code `segment`,
`predict-base`, `predict --runs` and `explain` run: film -> histogram
equalisation + gamma -> letterbox -> lung segmentation -> mask clean-up (two
largest components, holes filled) -> lung-fraction QC -> 1024x1024 masked view
-> K lung-centred patches (fixed seed) -> every base learner in one batched
pass -> vote / mean scores -> ensemble -> 4 probabilities. No approximation:
for the same film the export serves what the cache and `predict-base` computed.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import tensorflow as tf

from tfflannel import CLASS_NAMES, DISCLAIMER
from tfflannel.data.io import image_limits
from tfflannel.errors import InputError
from tfflannel.export.encoded_guard import checked_encoded_images
from tfflannel.film_pipeline import (
    CONFIDENCE_QC_OFF,
    ViewSettings,
    aggregate_scores,
    crop_patches,
    evaluation_centres,
    global_view,
    masked_view,
    segment_quality,
    segmenter_input,
)

IMAGE_LIMITS_FILE = "image_limits.json"
"""In `assets.extra/`: the `max_megapixels` and `min_side` the export's `serving_default` enforces."""


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
        limits: dict or None. `max_megapixels` and `min_side` that `serving_default` enforces from each encoded
            image's header (`encoded_guard`); `None` takes those in force (`data.io.image_limits`). Defaults to
            `None`.
    """

    def __init__(self, segmenter, learners, ensemble=None, k=100, seed=0, score="prob", view=None, limits=None):
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


# Which option changes each cache-key entry, for the "how to fix" half of a mismatch message.
_KEY_FIX = {"segmenter": "--seg (the segmenter `segment` used for that work directory)",
            "segmenter_input": "--seg (the segmenter `segment` used for that work directory)",
            "segmenter_classes": "--seg (the segmenter `segment` used for that work directory)",
            "size": "--set segmentation.cache_size={}", "min_lung_fraction": "--set segmentation.min_lung_fraction={}",
            "max_lung_fraction": "--set segmentation.max_lung_fraction={}", "input": "--set patches.input={}",
            "min_mask_confidence": "--set segmentation.min_mask_confidence={}",
            "max_flip_disagreement": "--set segmentation.max_flip_disagreement={}"}


def recorded_cache_key(run_dir, info):
    """The cache key a patch run was trained and evaluated on, and where it was read.

    The key recorded in run.yaml at training time comes first (it travels with a copied run folder); runs
    trained before it was recorded fall back to their work directory's `cache/cache.json`.

    Args:
        run_dir: str or Path. A patch run directory.
        info: RunInfo. Its run.yaml.

    Returns:
        tuple: `(key, source)`: a dict (or `None` if neither is available) and a description of its origin.
    """
    if info.cache_key:
        return info.cache_key, f"{Path(run_dir) / 'run.yaml'}"
    path = info.workdir_path(run_dir) / "cache" / "cache.json"
    if path.is_file():
        return json.loads(path.read_text()).get("key"), str(path)
    return None, str(path)


def _scored_with(run_dir):
    """The identity (K, seed, ...) of a run's current `predict-base` scores, or `{}` when it has none.

    Only scores of the run's present model that finished at least one partition count: a predict-base run
    that was killed before writing anything, or scores of a model trained again since, describe nothing
    that is served. An unreadable `provenance.json` counts as none (with a warning).
    """
    import warnings

    from tfflannel.predictions import read_provenance
    from tfflannel.run_info import file_sha256

    try:
        recorded = read_provenance(run_dir)
    except (OSError, ValueError) as error:
        warnings.warn(f"{run_dir}: unreadable predictions/provenance.json ({error}); K and seed not checked",
                      stacklevel=3)
        return {}
    identity = recorded.get("identity") or {}
    model = Path(run_dir) / "model.keras"
    if not recorded.get("done") or not model.is_file() or identity.get("model_sha256") != file_sha256(model):
        return {}
    return identity


def check_runs_match(segmenter, run_dirs, infos, ensemble_dir=None, k=100, seed=0, view=None, scores=True):
    """Refuse to serve runs with a segmenter, view, K or seed other than those they were evaluated with.

    For each patch run, the segmenter's fingerprint and the view settings (size, QC bounds, patches.input) must
    equal the cache key the run was trained on (`recorded_cache_key`); global runs do not read the cache and
    are not checked. With an ensemble, K and the patch seed must equal those of the member predictions it
    was fit on (its `resume/state.json` fingerprint, else K from its run.yaml); without one, a patch run's K and
    seed must equal those of its own `predict-base` scores (`predictions/provenance.json`), when it has any. A
    run whose key is not recorded anywhere (an older run copied without its work directory) is served with a
    warning.

    Args:
        segmenter: `segmentation.inference.Segmenter`.
        run_dirs: list of str or Path. The base-learner runs.
        infos: list of RunInfo. Their run.yaml, in the same order.
        ensemble_dir: str or Path or None. The ensemble run. Defaults to `None`.
        k: int. Patches per image to serve. Defaults to `100`.
        seed: int. Patch seed to serve. Defaults to `0`.
        view: ViewSettings. The view to serve. Defaults to `ViewSettings()`.
        scores: bool. Also check K and the seed (serving); `explain`, which draws patches but serves no
            scores, passes `False`. Defaults to `True`.

    Raises:
        InputError: a mismatch, naming the run, both values and the option that fixes it.
    """
    import warnings

    from tfflannel.segmentation.cache import CacheSettings

    expected = json.loads(json.dumps(CacheSettings(view or ViewSettings()).key(segmenter)))
    problems = []
    for run_dir, info in zip(run_dirs, infos, strict=True):
        if info.kind != "patch":
            continue
        recorded, source = recorded_cache_key(run_dir, info)
        if recorded is None:
            warnings.warn(f"{run_dir}: cannot check the segmenter and view it was trained with (no cache_key in "
                          f"run.yaml, no {source}); serving it unchecked", stacklevel=2)
            continue
        for name in sorted(set(recorded) | set(expected)):
            was, now = recorded.get(name), expected.get(name)
            if was != now:
                fix = _KEY_FIX.get(name, "rerun `segment` and retrain the run").format(
                    CONFIDENCE_QC_OFF[name] if was is None and name in CONFIDENCE_QC_OFF else was)
                problems.append(f"{run_dir}: {name} was {was!r} (per {source}), is {now!r} here; fix: {fix}")
    if scores and not ensemble_dir:
        for run_dir, info in zip(run_dirs, infos, strict=True):
            evaluated = _scored_with(run_dir) if info.kind == "patch" else {}
            if not evaluated:
                continue
            for name, key, served in (("K", "k", k), ("patch seed", "seed", seed)):
                was, option = evaluated[key], f"inference.{key}"
                if int(was) != int(served):
                    problems.append(f"{run_dir}: its predict-base scores (predictions/provenance.json) used {name} "
                                    f"{was}, served with {name} {served}; fix: --set {option}={was}")
    if scores and ensemble_dir:
        from tfflannel.resume import STATE_FILE
        from tfflannel.run_info import load_run_info

        state = Path(ensemble_dir) / "resume" / STATE_FILE
        members = json.loads(state.read_text()).get("fingerprint", {}) if state.is_file() else {}
        for index, (run_dir, info) in enumerate(zip(run_dirs, infos, strict=True)):
            if info.kind != "patch":
                continue
            fit_k = members.get(f"member{index}.k", load_run_info(ensemble_dir).k)
            fit_seed = members.get(f"member{index}.seed")
            if fit_k is not None and int(fit_k) != int(k):
                problems.append(f"{ensemble_dir}: fit on {run_dir}'s predictions with K={fit_k}, served with "
                                f"K={k}; fix: --set inference.k={fit_k}")
            if fit_seed is not None and int(fit_seed) != int(seed):
                problems.append(f"{ensemble_dir}: fit on {run_dir}'s predictions with patch seed {fit_seed}, served "
                                f"with seed {seed}; fix: --set inference.seed={fit_seed}")
    if problems:
        raise InputError("what would be served differs from what was evaluated:\n  " + "\n  ".join(problems))


def build_pipeline(segmenter, run_dirs, ensemble_dir=None, k=100, seed=0, view=None, limits=None):
    """An InferencePipeline from run directories, checked against what the runs were evaluated with.

    An ensemble's own learner order is enforced, and `check_runs_match` refuses a segmenter, view, K or seed
    other than those the runs were trained and evaluated with.

    Args:
        segmenter: `segmentation.inference.Segmenter`.
        run_dirs: list of str or Path. Base-learner runs (the ensemble's order).
        ensemble_dir: str or Path or None. A train-ensemble run. Defaults to `None`.
        k: int. Patches per image. Defaults to `100`.
        seed: int. Patch seed. Defaults to `0`.
        view: ViewSettings. Defaults to `ViewSettings()`.
        limits: dict or None. Image size limits for `serving_default` (see `InferencePipeline`). Defaults to `None`.

    Returns:
        InferencePipeline.

    Raises:
        InputError: runs not in the ensemble's order, an ensemble run among the learners, or a mismatch.
    """
    import tfflannel.models.ensemble  # noqa: F401  (registers the ensemble layers for loading)
    from tfflannel.run_info import load_run_info

    infos = [load_run_info(r) for r in run_dirs]
    for run_dir, info in zip(run_dirs, infos, strict=True):
        if info.kind == "ensemble":
            raise InputError(f"{run_dir} is a train-ensemble run; pass it as --ensemble and its learners as --runs")
    ensemble, score = None, "prob"
    if ensemble_dir:
        info = load_run_info(ensemble_dir)
        expected = [str(p.resolve()) for p in info.run_paths(ensemble_dir)]
        given = [str(Path(r).resolve()) for r in run_dirs]
        if given != expected:
            raise InputError(f"{ensemble_dir} was trained on runs {expected} in this order; received {given}")
    check_runs_match(segmenter, run_dirs, infos, ensemble_dir, k, seed, view)
    if ensemble_dir:
        ensemble = keras.saving.load_model(Path(ensemble_dir) / "model.keras", compile=False)
        score = info.score or "prob"
    return InferencePipeline(segmenter, load_learner_runs(run_dirs), ensemble, k=k, seed=seed, score=score, view=view,
                             limits=limits)


def pipeline_from_config(config, segmenter, run_dirs, ensemble_dir=None):
    """`build_pipeline` with K, seed, view (QC, size, patches.input) and image limits (`data.*`) from the config."""
    limits = {"max_megapixels": config.data.max_megapixels, "min_side": config.data.min_side}
    return build_pipeline(segmenter, run_dirs, ensemble_dir, k=config.inference.k, seed=config.inference.seed,
                          view=ViewSettings.from_config(config), limits=limits)


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
    (extra / IMAGE_LIMITS_FILE).write_text(json.dumps(pipeline.image_limits()))
    (extra / "README.txt").write_text(
        f"tfflannel pipeline export. Classes in output order: {', '.join(CLASS_NAMES)}.\n"
        f"K={pipeline.k} patches, seed {pipeline.seed}, score '{pipeline.score}', view {pipeline.view}.\n"
        f"serving_default refuses images over {pipeline.max_megapixels:g} megapixels (data.max_megapixels) or under "
        f"{pipeline.min_side} px a side (data.min_side), read from their headers before decoding.\n"
        f"{DISCLAIMER}\n")
    tmp.rename(target)
    return target
