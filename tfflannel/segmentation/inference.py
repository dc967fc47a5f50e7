"""Lung segmenters: load one, mask whole films, evaluate.

Masks come from `tfflannel.film_pipeline` (equalisation, letterbox, clean-up), the
code `segment`, `predict`, `explain` and the export run, so the Jaccard index
`evaluate-seg` reports is that of the masks the learners see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfflannel.errors import InputError
from tfflannel.film_pipeline import equalize_gamma_tf, film_mask, flip_average, lung_masks, segmenter_input
from tfflannel.models.fc_densenet import SEGMENTATION_CLASSES, build_fc_densenet, lung_class_indices
from tfflannel.segmentation.descriptor import DESCRIPTOR_FILE, read_segmenter_descriptor
from tfflannel.utils import sha256_of_file

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED_SEGMENTER = WEIGHTS_DIR / DESCRIPTOR_FILE


@dataclass
class Segmenter:
    """A lung segmentation model with the input size and class set it was trained with.

    Args:
        model: keras.Model. (S, S, 1) in [0, 1] -> (S, S, classes) probabilities.
        input_size: int. S. Defaults to `256`.
        classes: str. `lung` or `jsrt` (see `models.fc_densenet.SEGMENTATION_CLASSES`). Defaults to `"lung"`.
        description: str. Where it came from. Defaults to `""`.
        fingerprint: str. sha256 of its weights file(s), recorded by the cache. Defaults to `""`.
        flip_tta: bool. Average the output on each film and on its left-right mirror (the descriptor's
            `flip_tta`). Defaults to `False`.
    """

    model: keras.Model
    input_size: int = 256
    classes: str = "lung"
    description: str = ""
    fingerprint: str = ""
    flip_tta: bool = False

    @property
    def lung_classes(self):
        """Tuple of int. Output channels whose union is the lung mask (`lung_class_indices(self.classes)`)."""
        return tuple(int(i) for i in lung_class_indices(self.classes))

    def prepare(self, film):
        """(H, W) film -> ((S, S, 1) segmenter input, (H, W) float32 equalised film)."""
        return segmenter_input(film, self.input_size), equalize_gamma_tf(film)

    def outputs(self, batch, mirrored=True):
        """The model's (B, S, S, classes) float32 output on a batch and, if `mirrored`, on its mirror (unflipped).

        Args:
            batch: (B, S, S, 1) segmenter inputs.
            mirrored: bool. Also run the left-right mirrored batch. Defaults to `True`.

        Returns:
            (plain, mirrored output or None).
        """
        plain = tf.cast(tf.constant(self.model.predict_on_batch(batch)), tf.float32)
        if not mirrored:
            return plain, None
        return plain, tf.cast(tf.constant(self.model.predict_on_batch(tf.reverse(batch, axis=[2]))), tf.float32)

    def probabilities(self, batch):
        """(B, S, S, 1) segmenter inputs -> (B, S, S, classes) float32, inference mode (flip-averaged if `flip_tta`)."""
        plain, mirrored = self.outputs(batch, mirrored=self.flip_tta)
        return plain if mirrored is None else flip_average(plain, mirrored)

    def inputs(self, images):
        """(H, W) integer films -> (B, S, S, 1) float32 segmenter inputs (film pipeline's letterbox)."""
        if not hasattr(self, "_prepare"):
            self._prepare = tf.function(lambda film: segmenter_input(film, self.input_size),
                                        input_signature=[tf.TensorSpec([None, None], tf.uint8)])
        return tf.stack([self._prepare(tf.constant(image)) for image in images])

    def film_masks(self, probabilities, images, clean=True):
        """Segmenter output on `images` -> (H, W) uint8 lung masks at each film's own size.

        Args:
            probabilities: (B, S, S, classes) output on `self.inputs(images)`.
            images: sequence of the B (H, W) films.
            clean: bool. The film pipeline's clean-up (two largest components, holes filled); `False` only to
                measure its effect. Defaults to `True`.

        Returns:
            list of (H, W) uint8 arrays.
        """
        if not hasattr(self, "_masks"):
            self._masks = {flag: tf.function(lambda probs, f=flag: lung_masks(probs, self.lung_classes, clean=f),
                                             reduce_retracing=True) for flag in (True, False)}
            self._film_mask = tf.function(film_mask, reduce_retracing=True)
        return [self._film_mask(mask, tf.constant(image.shape[0]), tf.constant(image.shape[1])).numpy()
                for image, mask in zip(images, self._masks[bool(clean)](probabilities), strict=True)]

    def predict(self, images, batch_size=8, clean=True):
        """(H, W) integer films -> (H, W) uint8 lung masks at each film's own size (film pipeline).

        Args:
            images: sequence of (H, W) integer arrays.
            batch_size: int. Films per segmenter call. Defaults to `8`.
            clean: bool. As in `film_masks`. Defaults to `True`.
        """
        masks = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            masks += self.film_masks(self.probabilities(self.inputs(chunk)), chunk, clean)
        return masks


def load_segmenter(source=None):
    """Load a segmenter from a run directory, a `.keras` file, a descriptor JSON, or the shipped one.

    Args:
        source: None (the shipped lung segmenter), a `train-seg` run directory
            (its `model.keras` and `config.yaml`), a `.keras` file, or a segmenter
            descriptor `.json` (`segmentation.descriptor`).
    """
    path = Path(source) if source else SHIPPED_SEGMENTER
    if path.is_dir():
        from tfflannel.run_info import load_run_config

        model = keras.saving.load_model(path / "model.keras", compile=False)
        if (path / "config.yaml").is_file():
            settings = load_run_config(path).segmentation
            size, classes = settings.input_size, settings.classes
        else:
            size, classes = int(model.input_shape[1]), "lung"
        return Segmenter(model, size, classes, str(path), sha256_of_file(path / "model.keras"))
    if not path.exists():
        raise FileNotFoundError(f"{path}: no segmentation model here (expected a run directory, .keras or .json)")
    if path.suffix == ".keras":
        model = keras.saving.load_model(path, compile=False)
        classes = "lung" if model.output_shape[-1] == 2 else "jsrt"
        return Segmenter(model, int(model.input_shape[1]), classes, str(path), sha256_of_file(path))
    descriptor = read_segmenter_descriptor(path)
    if descriptor.classes not in SEGMENTATION_CLASSES:
        raise InputError(f"{path}: segmenter descriptor `classes` must be one of {sorted(SEGMENTATION_CLASSES)}. "
                         f"Received: {descriptor.classes!r}.")
    size = descriptor.input_size
    model = build_fc_densenet(descriptor.preset, num_classes=len(SEGMENTATION_CLASSES[descriptor.classes]),
                              input_shape=(size, size, 1), **descriptor.architecture)
    weights = descriptor.weights_path(path)
    if not weights.is_file():
        raise FileNotFoundError(f"{path}: its weights file {weights} is missing")
    model.load_weights(weights)
    return Segmenter(model, size, descriptor.classes, descriptor.description or str(path),
                     sha256_of_file(path, weights), flip_tta=descriptor.flip_tta)


def evaluate_segmenter(segmenter, pairs, batch_size=8, progress=True, clean=True):
    """Jaccard and Dice of post-processed lung masks against ground truth at the mask's own resolution.

    Args:
        segmenter: Segmenter.
        pairs: sequence of SegPair.
        batch_size: int. Defaults to `8`.
        progress: bool. Defaults to `True`.
        clean: bool. Score the cleaned masks every stage uses; `False` scores the raw argmax. Defaults to `True`.

    Returns:
        dict: jaccard_mean, dice_mean, images, per_image (image, jaccard, dice).
    """
    from tfflannel.segmentation.metrics import dice_coefficient, jaccard_index
    from tfflannel.segmentation.readers import load_pair

    per_image = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="evaluating", unit="batch", disable=not progress):
        chunk = pairs[start:start + batch_size]
        loaded = [load_pair(pair, "lung") for pair in chunk]
        masks = segmenter.predict([image for image, _ in loaded], batch_size, clean=clean)
        for pair, (_, truth), mask in zip(chunk, loaded, masks, strict=True):
            per_image.append({"image": pair.image, "jaccard": jaccard_index(mask, truth),
                              "dice": dice_coefficient(mask, truth)})
    return {
        "jaccard_mean": float(np.mean([r["jaccard"] for r in per_image])) if per_image else None,
        "dice_mean": float(np.mean([r["dice"] for r in per_image])) if per_image else None,
        "images": len(per_image),
        "per_image": per_image,
    }
