"""Lung masks for whole images: load a segmenter, predict at 256, post-process, evaluate.

Shared by `evaluate-seg`, `segment`, the export and the tools, so every stage
sees the same mask for the same image.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

from tfflannel.models.fc_densenet import SEGMENTATION_CLASSES, build_fc_densenet, lung_class_indices
from tfflannel.segmentation.postprocess import dice_coefficient, jaccard_index, postprocess_lung_mask
from tfflannel.segmentation.preprocess import preprocess_for_segmentation, unletterbox

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
SHIPPED_SEGMENTER = WEIGHTS_DIR / "lung_segmenter.json"


@dataclass
class Segmenter:
    """A lung segmentation model with the input size and class set it was trained with."""

    model: keras.Model
    input_size: int = 256
    classes: str = "lung"
    description: str = ""

    def predict(self, images, batch_size=8):
        """(H, W) uint8 images -> post-processed (H, W) uint8 lung masks at each image's own size."""
        masks = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            prepared = [preprocess_for_segmentation(image, self.input_size) for image in chunk]
            batch = np.stack([array for array, _ in prepared])
            probabilities = np.asarray(self.model.predict_on_batch(batch))
            lung = np.isin(np.argmax(probabilities, axis=-1), lung_class_indices(self.classes))
            for square, (_, box) in zip(lung, prepared, strict=True):
                masks.append(postprocess_lung_mask(unletterbox(square.astype(np.uint8), box)))
        return masks


def load_segmenter(source=None):
    """Load a segmenter from a run directory, a `.keras` file, a descriptor JSON, or the shipped one.

    Args:
        source: None (the shipped lung segmenter), a `train-seg` run directory
            (its `model.keras` and `config.yaml`), a `.keras` file, or a JSON
            descriptor `{"preset", "input_size", "classes", "weights"}`.
    """
    path = Path(source) if source else SHIPPED_SEGMENTER
    if path.is_dir():
        import yaml

        config = yaml.safe_load((path / "config.yaml").read_text())["segmentation"] if (path / "config.yaml").exists() else {}
        model = keras.saving.load_model(path / "model.keras", compile=False)
        return Segmenter(model, int(config.get("input_size", model.input_shape[1])), config.get("classes", "lung"), str(path))
    if not path.exists():
        raise FileNotFoundError(f"{path}: no segmentation model here (expected a run directory, .keras or .json)")
    if path.suffix == ".keras":
        model = keras.saving.load_model(path, compile=False)
        classes = "lung" if model.output_shape[-1] == 2 else "jsrt"
        return Segmenter(model, int(model.input_shape[1]), classes, str(path))
    descriptor = json.loads(path.read_text())
    classes = descriptor.get("classes", "lung")
    size = int(descriptor.get("input_size", 256))
    model = build_fc_densenet(descriptor["preset"], num_classes=len(SEGMENTATION_CLASSES[classes]),
                              input_shape=(size, size, 1), **descriptor.get("architecture", {}))
    model.load_weights(path.parent / descriptor["weights"])
    return Segmenter(model, size, classes, descriptor.get("description", str(path)))


def evaluate_segmenter(segmenter, pairs, batch_size=8, progress=True):
    """Jaccard and Dice of post-processed lung masks against ground truth at the mask's own resolution."""
    from tfflannel.segmentation.readers import load_pair

    per_image = []
    for start in tqdm(range(0, len(pairs), batch_size), desc="evaluating", unit="batch", disable=not progress):
        chunk = pairs[start:start + batch_size]
        loaded = [load_pair(pair, "lung") for pair in chunk]
        masks = segmenter.predict([image for image, _ in loaded], batch_size)
        for pair, (_, truth), mask in zip(chunk, loaded, masks, strict=True):
            per_image.append({"image": pair.image, "jaccard": jaccard_index(mask, truth), "dice": dice_coefficient(mask, truth)})
    return {
        "jaccard_mean": float(np.mean([r["jaccard"] for r in per_image])) if per_image else None,
        "dice_mean": float(np.mean([r["dice"] for r in per_image])) if per_image else None,
        "images": len(per_image),
        "per_image": per_image,
    }
