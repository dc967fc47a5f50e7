"""Train an FC-DenseNet lung segmenter (`train-seg`), backend-agnostic at its core.

The recipe follows the original: pixel-weighted cross-entropy (background 0.5),
Adam lr 1e-4 with weight decay 1e-6, lr x0.1 at 70/80/90 % of the epochs, best
checkpoint by validation Jaccard index. Two deliberate changes: the Jaccard
used for selection is measured in inference mode after a precise-BN pass, and
BN momentum is 0.9 (PyTorch's 0.1), because Keras' default 0.99 lagged badly
on small data. Under TensorFlow the batches come from a tf.data pipeline
(`tf_pipeline.py`); other backends (JAX on a GPU host) use a PyDataset with the
same augmentation function. Either way epoch e's order and augmentation derive
from (seed, e), and `ResumableFit` resumes a killed run exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import keras
import numpy as np
from tqdm.auto import tqdm

from tfflannel.config import dump_config
from tfflannel.models.fc_densenet import SEGMENTATION_CLASSES, build_fc_densenet, lung_class_indices
from tfflannel.models.losses import segmentation_loss
from tfflannel.models.precise_bn import recompute_batchnorm_statistics
from tfflannel.resume import save_model_without_optimizer
from tfflannel.schedules import cosine_decay, scale_milestones, step_decay
from tfflannel.segmentation.augment import augment_pair
from tfflannel.segmentation.preprocess import preprocess_for_segmentation, resize_label_map
from tfflannel.segmentation.readers import load_pair, split_pairs
from tfflannel.training import TrainingTask, train
from tfflannel.utils import write_text_atomic

SEGMENT_ONLY_KEYS = ("cache_size", "min_lung_fraction", "max_lung_fraction", "min_mask_confidence",
                     "max_flip_disagreement", "shard_size", "inference_batch")
"""`segmentation` settings that only `segment` reads: changing one never makes a `train-seg` run stale."""

REMOVED_KEYS = ("keep_aspect",)
"""Settings removed since (config.REMOVED_KEYS): runs recorded with them still resume."""

log = logging.getLogger(__name__)


def load_training_arrays(pairs, size=256, classes="lung", progress=True):
    """Decode and pre-process pairs into (N, S, S, 1) float32 images and (N, S, S) uint8 labels."""
    images = np.zeros((len(pairs), size, size, 1), np.float32)
    labels = np.zeros((len(pairs), size, size), np.uint8)
    for index, pair in enumerate(tqdm(pairs, desc="loading pairs", unit="pair", disable=not progress)):
        image, label_map = load_pair(pair, classes)
        images[index] = preprocess_for_segmentation(image, size)
        labels[index] = resize_label_map(label_map, size)
    return images, labels


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled, augmented batches for backends without tf.data; epoch e seeded by (seed, e), from `first_epoch`."""

    def __init__(self, images, labels, batch_size, seed=0, augment=True, flip=True, first_epoch=0, strength="standard",
                 **kwargs):
        super().__init__(**kwargs)
        self.images, self.labels = images, labels
        self.batch_size, self.seed, self.augment, self.flip = batch_size, seed, augment, flip
        self.strength = strength
        self.epoch = first_epoch
        self.order = np.random.default_rng([seed, first_epoch]).permutation(len(images))

    def __len__(self):
        return int(np.ceil(len(self.images) / self.batch_size))

    def on_epoch_end(self):
        """Advances the epoch counter and draws the next epoch's order from `(seed, epoch)`."""
        self.epoch += 1
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.images))

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        images, labels = [], []
        for row in rows:
            image, label = self.images[row], self.labels[row]
            if self.augment:
                image, label = augment_pair(image, label, rng, flip=self.flip, strength=self.strength)
            images.append(image)
            labels.append(label)
        return np.stack(images), np.stack(labels).astype(np.int32)


def predict_lung_masks(model, images, classes="lung", batch_size=8):
    """Inference-mode lung masks (N, S, S) uint8 from pre-processed images, cleaned as at inference.

    The clean-up (two largest components, holes filled) is `film_pipeline.lung_mask`, the one `segment`,
    `evaluate-seg` and the export use, so the Jaccard index selecting the checkpoint is that of served masks.
    """
    import tensorflow as tf

    from tfflannel.film_pipeline import lung_masks

    probabilities = model.predict(images, batch_size=batch_size, verbose=0)
    lung = tuple(int(i) for i in lung_class_indices(classes))
    clean = tf.function(lambda probs: lung_masks(probs, lung), reduce_retracing=True)
    masks = [clean(tf.constant(probabilities[i:i + batch_size], tf.float32)).numpy()
             for i in range(0, len(probabilities), batch_size)]
    return np.concatenate(masks).astype(np.uint8) if masks else np.zeros(np.shape(probabilities)[:3], np.uint8)


def mean_jaccard(predicted, labels, classes="lung"):
    """Mean over images of the lung Jaccard index (union of lung classes)."""
    from tfflannel.segmentation.metrics import jaccard_index

    lung = np.isin(labels, lung_class_indices(classes))
    return float(np.mean([jaccard_index(p, t) for p, t in zip(predicted, lung, strict=True)]))


class InferenceJaccard(keras.callbacks.Callback):
    """Each epoch: precise BN over the training images, then inference-mode JI on validation.

    Writes `val_jaccard` and `learning_rate` into the epoch logs so that later
    callbacks (checkpoint, early stopping, TensorBoard) can use them.
    """

    def __init__(self, train_images, val_images, val_labels, classes, precise_bn_batch=8, precise_bn=True, every=1):
        super().__init__()
        self.train_images, self.val_images, self.val_labels = train_images, val_images, val_labels
        self.classes, self.precise_bn_batch, self.precise_bn, self.every = classes, precise_bn_batch, precise_bn, every
        self.last = 0.0

    def on_epoch_end(self, epoch, logs=None):
        """Sets `logs["learning_rate"]` and, when validation images exist, `logs["val_jaccard"]`.

        The Jaccard index is recomputed on epochs where `epoch + 1` is a multiple of `every` and on the
        last epoch (after precise BN when enabled); on other epochs the last computed value is repeated
        (`0.0` before the first evaluation).

        Args:
            epoch: int. Zero-based epoch index.
            logs: dict or None. Epoch logs, updated in place. Defaults to `None`.
        """
        logs = logs if logs is not None else {}
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if not len(self.val_images):
            return
        # Between evaluations the last value is carried, so a checkpoint is only written after a real gain.
        if (epoch + 1) % self.every == 0 or epoch + 1 == self.params.get("epochs"):
            if self.precise_bn:
                recompute_batchnorm_statistics(self.model, batches_of(self.train_images, self.precise_bn_batch))
            self.last = mean_jaccard(predict_lung_masks(self.model, self.val_images, self.classes),
                                     self.val_labels, self.classes)
        logs["val_jaccard"] = self.last


def batches_of(array, size):
    """Consecutive slices of `size` rows."""
    return (array[i:i + size] for i in range(0, len(array), size))


def build_segmenter(config):
    """Builds the untrained FC-DenseNet that `config.segmentation` describes.

    Args:
        config: Config. Its `segmentation` section gives the model name, class set, input size,
            dropout and BN momentum.

    Returns:
        keras.Model. (S, S, 1) -> (S, S, num_classes) softmax probabilities, with S = `input_size`.
    """
    seg = config.segmentation
    num_classes = len(SEGMENTATION_CLASSES[seg.classes])
    return build_fc_densenet(seg.model, num_classes=num_classes, input_shape=(seg.input_size, seg.input_size, 1),
                             dropout=seg.dropout, bn_momentum=seg.bn_momentum)


class TimeLimit(keras.callbacks.Callback):
    """Stop training cleanly (outputs still written) once `seconds` have passed."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds, self.started = seconds, time.time()

    def on_epoch_end(self, epoch, logs=None):
        """Sets `model.stop_training` (with a warning) once more than `seconds` have passed since construction.

        Args:
            epoch: int. Zero-based epoch index (only logged).
            logs: dict or None. Epoch logs (unused). Defaults to `None`.
        """
        if time.time() - self.started > self.seconds:
            log.warning("time limit of %.0f s reached after epoch %d: stopping", self.seconds, epoch + 1)
            self.model.stop_training = True


def _pairs_sha256(pairs):
    text = json.dumps([[p.image, sorted(p.masks.items()), p.patient_id, p.kind] for p in pairs])
    return hashlib.sha256(text.encode()).hexdigest()


class SegmenterTask(TrainingTask):
    """A lung segmenter's training (`train-seg`) as a task of the one trainer (`training.train`).

    Selects on the inference-mode Jaccard index of the patient-disjoint validation pairs (after precise BN),
    or keeps the last epoch when there are none.

    Args:
        pairs: list of SegPair. Split here into patient-disjoint train/validation.
        seg: SegmentationConfig.
        progress: bool. Progress bars while loading pairs. Defaults to `True`.
        time_limit_s: float. Stop cleanly after this many seconds (the run then counts as complete).
            Defaults to `None`.
    """

    section = "segmentation"
    ignore = tuple(f"segmentation.{key}" for key in SEGMENT_ONLY_KEYS + REMOVED_KEYS)

    def __init__(self, pairs, seg, progress=True, time_limit_s=None):
        self.pairs, self.progress, self.time_limit_s = pairs, progress, time_limit_s
        self.train_pairs, self.val_pairs = split_pairs(pairs, seg.validation_share, seg.seed)
        self.has_val = bool(self.val_pairs)
        self.monitor = "val_jaccard" if self.has_val else None

    def fingerprint(self, config):
        """The pairs (paths, masks, patients) and the backend."""
        return {"pairs_sha256": _pairs_sha256(self.pairs), "backend": keras.backend.backend()}

    def completed(self, fit, out_dir):
        """metrics.json of a complete run (`None` when it is missing: it is measured again)."""
        path = out_dir / "metrics.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def prepare(self, config, out_dir):
        """Load and pre-process the pairs; write config.yaml."""
        seg = config.segmentation
        log.info("segmentation: %d training and %d validation pairs", len(self.train_pairs), len(self.val_pairs))
        self.train_x, self.train_y = load_training_arrays(self.train_pairs, seg.input_size, seg.classes,
                                                          self.progress)
        self.val_x, self.val_y = load_training_arrays(self.val_pairs, seg.input_size, seg.classes, self.progress)
        dump_config(config, out_dir / "config.yaml")

    def training_data(self, config, first_epoch, batch_size, drop_remainder):
        """Augmented batches from `first_epoch`: a tf.data pipeline on TensorFlow, a PyDataset elsewhere."""
        seg = config.segmentation
        flip = seg.classes == "lung"
        if keras.backend.backend() == "tensorflow":
            from tfflannel.segmentation.tf_pipeline import make_training_dataset

            batches = make_training_dataset(self.train_x, self.train_y, batch_size, seed=seg.seed, augment=seg.augment,
                                            flip=flip, first_epoch=first_epoch, epochs=seg.epochs,
                                            strength=seg.augment_strength)
            return batches, {"steps_per_epoch": int(np.ceil(len(self.train_x) / batch_size))}
        return AugmentedBatches(self.train_x, self.train_y, batch_size, seed=seg.seed, augment=seg.augment, flip=flip,
                                first_epoch=first_epoch, strength=seg.augment_strength), {}

    def build_model(self, config):
        """The FC-DenseNet, compiled with AdamW and the section's loss (background weighted)."""
        seg = config.segmentation
        model = build_segmenter(config)
        weights = [seg.background_weight] + [1.0] * (model.output_shape[-1] - 1)
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate=seg.learning_rate, weight_decay=seg.weight_decay),
                      loss=segmentation_loss(seg.loss, weights, lung_class_indices(seg.classes)))
        return model

    def callbacks(self, config, model, data, out_dir):
        """Inference-mode Jaccard (precise BN), the schedule, the time limit, validation masks in TensorBoard."""
        seg = config.segmentation
        callbacks = [InferenceJaccard(self.train_x, self.val_x, self.val_y, seg.classes, seg.precise_bn_batch,
                                      seg.precise_bn, seg.eval_every)]
        if seg.lr_schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_jaccard" if self.has_val else "loss",
                                                               mode="max" if self.has_val else "min", factor=0.1,
                                                               patience=seg.plateau_patience))
        elif seg.lr_schedule == "cosine":
            callbacks.append(keras.callbacks.LearningRateScheduler(cosine_decay(seg.epochs, seg.learning_rate)))
        else:
            callbacks.append(keras.callbacks.LearningRateScheduler(
                step_decay(scale_milestones(seg.lr_milestones, seg.epochs), seg.learning_rate)))
        if self.time_limit_s:
            callbacks.append(TimeLimit(self.time_limit_s))
        if self.has_val and keras.backend.backend() == "tensorflow":
            from tfflannel.segmentation.tf_pipeline import MaskImageLogger

            callbacks.append(MaskImageLogger(out_dir / "logs", self.val_x[:4], self.val_y[:4], seg.classes,
                                             predict_lung_masks))
        return callbacks

    def finalise(self, config, fit, out_dir):
        """Reload the best model (precise BN without validation), measure it, write metrics.json; return it."""
        seg = config.segmentation
        # model.keras holds the best epoch, saved right after InferenceJaccard's precise-BN pass: statistics included.
        model = keras.saving.load_model(out_dir / "model.keras", compile=False)
        if not self.has_val and seg.precise_bn:
            recompute_batchnorm_statistics(model, batches_of(self.train_x, seg.precise_bn_batch))
            save_model_without_optimizer(model, out_dir / "model.keras")
        history = fit.history
        metrics = {
            "model": seg.model,
            "classes": seg.classes,
            "epochs_run": len(history.get("loss", [])),
            # summed over every process that trained it (None: started before tfflannel recorded it)
            "train_seconds": None if fit.state.train_seconds is None else round(fit.state.train_seconds, 1),
            "train_pairs": len(self.train_pairs),
            "validation_pairs": len(self.val_pairs),
            "validation_patients": len({p.patient_id for p in self.val_pairs}),
            "final_loss": float(history["loss"][-1]) if history.get("loss") else None,
        }
        if self.has_val:
            val_masks = predict_lung_masks(model, self.val_x, seg.classes)
            metrics["val_jaccard_inference"] = mean_jaccard(val_masks, self.val_y, seg.classes)
            metrics["best_epoch"] = fit.state.best_epoch + 1 if fit.state.best_epoch is not None else None
        write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        return metrics


def train_segmenter(config, pairs, out_dir, progress=True, extra_callbacks=(), time_limit_s=None, force=False,
                    echo=print):
    """Train, select on inference-mode JI, write RUNDIR/{model.keras, config.yaml, metrics.json, logs/}.

    Args:
        config: ExperimentConfig. Uses `config.segmentation`.
        pairs: list of SegPair. Split here into patient-disjoint train/validation.
        out_dir: str or Path. The run directory; a killed run resumes exactly when rerun (`resume/`).
        progress: bool. Progress bars and Keras lines. Defaults to `True`.
        extra_callbacks: list of keras callbacks. Defaults to `()`.
        time_limit_s: float. Stop cleanly after this many seconds (the run then counts as complete).
            Defaults to `None`.
        force: bool. Start over even if `out_dir` holds a complete or different run. Defaults to `False`.
        echo: callable(str). Where the "already complete" note goes. Defaults to `print`.

    Returns:
        dict. The metrics written to metrics.json.

    Raises:
        StaleRunError: `out_dir` holds a run made with other settings or pairs (and not `force`).
    """
    task = SegmenterTask(pairs, config.segmentation, progress, time_limit_s)
    return train(config, task, out_dir, progress, extra_callbacks, force, echo)
