"""`train-patch` and `train-global`: one backbone x one fold run (TensorFlow-specific).

Each is a `LearnerTask` of the one trainer (`tfflannel/training.py`). Both select on validation macro-F1
(and log per-class F1), measured in inference mode on a fixed, seeded set of validation patches or centre
crops, with TensorBoard logs. `ResumableFit` (tfflannel/resume.py) keeps the best model, early stopping and
the history, and resumes a killed run exactly: each epoch's data are drawn from (seed, epoch), never replayed.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import f1_score

from tfflannel import CLASS_NAMES
from tfflannel.config import dump_config
from tfflannel.data.manifest import load_manifest, validation_folds
from tfflannel.errors import InputError
from tfflannel.learners.infer import predict_image_scores
from tfflannel.learners.replicas import precise_bn_batches
from tfflannel.learners.strategy import chief_writes
from tfflannel.models.backbones import backbone_config
from tfflannel.models.classifier import build_classifier, inference_model
from tfflannel.models.precise_bn import recompute_batchnorm_statistics
from tfflannel.models.weights_files import check_weights_file
from tfflannel.resume import save_model_without_optimizer
from tfflannel.run_info import RunInfo, manifest_sha256, relative_to_run, save_run_info
from tfflannel.schedules import scale_milestones, step_decay
from tfflannel.segmentation.cache_record import recorded_cache_key
from tfflannel.training import TrainingTask, train
from tfflannel.utils import file_sha256

log = logging.getLogger(__name__)


class ValidationF1(keras.callbacks.Callback):
    """Image-level macro-F1 and per-class F1 (mean probability over the fixed patches) each epoch.

    With `bn_batches`, BatchNorm statistics are first recomputed over that many
    training batches of the epoch (precise BN; `bn_data(epoch)` gives them, so a
    resumed run uses the same batches), so selection sees the model as inference will.
    """

    def __init__(self, dataset_fn, bn_data=None, bn_batches=0):
        super().__init__()
        self.dataset_fn, self.bn_data, self.bn_batches = dataset_fn, bn_data, bn_batches

    def on_epoch_end(self, epoch, logs=None):
        """Add `val_macro_f1`, `val_f1_<class>` and `learning_rate` to `logs` (in place).

        Args:
            epoch: int. The 0-based epoch that just ended (selects the precise-BN batches).
            logs: dict. Keras' epoch logs; the values are added to it. Defaults to `None`.
        """
        logs = logs if logs is not None else {}
        if self.bn_batches and self.bn_data is not None:
            recompute_batchnorm_statistics(self.model, (x for x, _ in self.bn_data(epoch).take(self.bn_batches)))
        probs, labels, _ = predict_image_scores(self.model, self.dataset_fn())
        predicted = probs.mean(axis=1).argmax(axis=-1)
        per_class = f1_score(labels, predicted, labels=range(len(CLASS_NAMES)), average=None, zero_division=0)
        logs["val_macro_f1"] = float(np.mean(per_class))
        for name, value in zip(CLASS_NAMES, per_class, strict=True):
            logs[f"val_f1_{name}"] = float(value)
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class SamplePatchImages(keras.callbacks.Callback):
    """Writes one batch of training inputs to TensorBoard at the start (what the network really sees)."""

    def __init__(self, log_dir, dataset):
        super().__init__()
        self.log_dir, self.dataset = log_dir, dataset

    def on_train_begin(self, logs=None):
        """Write up to 8 images of the first batch, scaled to [0, 1], under `log_dir/patches` at step 0."""
        for patches, _ in self.dataset.take(1):
            writer = tf.summary.create_file_writer(str(Path(self.log_dir) / "patches"))
            with writer.as_default():
                tf.summary.image("training inputs", patches[:8] / 255.0, step=0, max_outputs=8)
            writer.flush()


def _apply_l1(model, l1):
    if l1 > 0:
        for variable in model.trainable_variables:
            if "kernel" in variable.path:
                variable.regularizer = keras.regularizers.L1(l1)


def _check_cache_view(config, info, workdir):
    """Record cache.json's key in `info` (what serving checks against); refuse a cache of other view settings."""
    cache_key = recorded_cache_key(workdir)
    if cache_key is None:
        return
    from tfflannel.film_pipeline import CONFIDENCE_QC_OFF, ViewSettings

    info.cache_key = cache_key
    view = ViewSettings.from_config(config).key()    # the confidence QC bounds only where set
    names = list(view) + [k for k in CONFIDENCE_QC_OFF if k in info.cache_key and k not in view]
    wrong = [f"{k}: cache {info.cache_key.get(k, CONFIDENCE_QC_OFF.get(k))!r}, "
             f"config {view.get(k, CONFIDENCE_QC_OFF.get(k))!r}" for k in names
             if info.cache_key.get(k) != view.get(k)]
    if wrong:
        raise InputError(f"{workdir / 'cache'} was built with other view settings than this config ("
                         f"{'; '.join(wrong)}); rerun `segment` with this config, or train with the cache's")


def _run_info(kind, backbone, fold, workdir, out_dir, size, k, seed, resize=None):
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return RunInfo(kind=kind, fold=int(fold), workdir=relative_to_run(workdir, out_dir), backbone=backbone,
                   input_size=int(size), resize=resize, k=int(k), seed=int(seed),
                   manifest_sha256=manifest_sha256(workdir))


def save_classifier(model, path):
    """`model.keras` of a base learner: the one-output classifier (without an auxiliary head), no optimizer state."""
    save_model_without_optimizer(inference_model(model), path)


def _compiled_classifier(cfg, backbone, size, weights, l1=0.0):
    """The base learner with the section's BN momentum and dropout, compiled with AdamW + cross-entropy.

    With `inception_v3_tv`'s reference head and `cfg.aux_loss_weight` > 0 an `AuxiliaryLossModel` (loss
    CE + aux_loss_weight * CE of the auxiliary head); `save_classifier` saves its one-output classifier.
    """
    model = build_classifier(backbone, size, weights=weights, bn_momentum=cfg.bn_momentum, dropout=cfg.dropout,
                             head=cfg.head, grouped_conv=cfg.grouped_conv, aux_loss_weight=cfg.aux_loss_weight)
    _apply_l1(model, l1)
    model.compile(optimizer=keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    return model


def _check_fold(workdir, fold):
    folds = validation_folds(load_manifest(workdir))
    if int(fold) not in folds:
        raise InputError(f"--fold {fold}: {Path(workdir) / 'manifest.csv'} has folds {folds}")


def _check_weights(weights):
    """A `--weights FILE` that is missing, truncated or of another kind is refused before the run directory exists."""
    if weights not in (None, "none", "None", "imagenet"):
        check_weights_file(weights)


class LearnerTask(TrainingTask):
    """A base learner's training (`train-patch`, `train-global`) as a task of the one trainer (`training.train`).

    What differs between the two kinds is given as arguments; the rest (selection on validation macro-F1 with
    precise BN, AdamW + cross-entropy, sample inputs in TensorBoard, run.yaml) is the same.

    Args:
        section: str. Config section of the learner (`patched` or `global_learner`).
        info: RunInfo. The run's run.yaml.
        workdir: str or Path. The work directory (manifest.csv, cache/).
        backbone: str. Registered backbone name.
        weights: str. `imagenet`, `none` or a weights file. Defaults to `None`.
        training_epochs: callable `(batch, drop_remainder, first_epoch, epochs) -> tf.data.Dataset` of the
            training epochs `[first_epoch, epochs)`, each drawn from (seed, epoch). Defaults to `None`.
        training_steps: callable `(batch, drop_remainder) -> int`, the steps of one epoch. Defaults to `None`.
        validation_data: callable `() -> tf.data.Dataset` of the fixed validation inputs. Defaults to `None`.
        l1: float. L1 penalty on every kernel. Defaults to `0.0`.
        schedule: callable `(section) -> list of keras callbacks` (a learning-rate schedule). Defaults to none.
    """

    monitor = "val_macro_f1"
    distributed = True

    def __init__(self, section, info, workdir, backbone, weights=None, training_epochs=None, training_steps=None,
                 validation_data=None, l1=0.0, schedule=lambda section: []):
        self.section, self.info, self.workdir = section, info, Path(workdir)
        self.backbone, self.weights = backbone, weights
        self.training_epochs, self.training_steps = training_epochs, training_steps
        self.validation_data = validation_data
        self.l1, self.schedule = l1, schedule
        self.batch, self.drop_remainder = None, False

    def fingerprint(self, config):
        """The kind, backbone, fold, weights file, precision and the hashes of the manifest and the cache index."""
        info, weights = self.info, self.weights
        cache_index = self.workdir / "cache" / "index.csv"
        return {"kind": info.kind, "backbone": info.backbone, "fold": info.fold,
                "weights": str(weights), "weights_sha256": file_sha256(weights) if weights else None,
                "mixed_precision": config.runtime.mixed_precision, "manifest_sha256": info.manifest_sha256,
                "cache_index_sha256": file_sha256(cache_index) if info.kind == "patch" else None}

    def save_model(self, model, path):
        """`save_classifier`: the one-output classifier."""
        save_classifier(model, path)

    def prepare(self, config, out_dir):
        """Set the precision policy, write config.yaml, check the cache's view settings, write run.yaml."""
        # Both ways: in one process (tests) an earlier mixed-precision run must not leak into this one.
        keras.mixed_precision.set_global_policy("mixed_float16" if config.runtime.mixed_precision else "float32")
        dump_config(config, out_dir / "config.yaml")
        if self.info.kind == "patch":
            _check_cache_view(config, self.info, self.workdir)
        save_run_info(out_dir, self.info)

    def training_data(self, config, first_epoch, batch_size, drop_remainder):
        """The training epochs from `first_epoch` and their steps."""
        self.batch, self.drop_remainder = batch_size, drop_remainder
        epochs = getattr(config, self.section).epochs
        return (self.training_epochs(batch_size, drop_remainder, first_epoch, epochs),
                {"steps_per_epoch": self.training_steps(batch_size, drop_remainder)})

    def build_model(self, config):
        """The classifier, compiled (`_compiled_classifier`)."""
        cfg = getattr(config, self.section)
        return _compiled_classifier(cfg, self.backbone, self.info.input_size, self.weights, self.l1)

    def callbacks(self, config, model, data, out_dir):
        """Validation macro-F1 (precise BN on one replica), the schedule, and sample inputs in TensorBoard."""
        cfg = getattr(config, self.section)
        bn_batches = precise_bn_batches(cfg.precise_bn_batches, model.distribute_strategy,
                                        f"{self.section}.precise_bn_batches")
        one_epoch = lambda epoch: self.training_epochs(self.batch, self.drop_remainder, epoch, epoch + 1)  # noqa: E731
        return [ValidationF1(self.validation_data, one_epoch, bn_batches), *self.schedule(cfg),
                SamplePatchImages(out_dir / "logs", data)]

    def finalise(self, config, fit, out_dir):
        """The fit (its `history`, `complete` and `describe()` tell what the run did)."""
        return fit


@chief_writes
def train_patch_learner(config, backbone, fold, workdir, out_dir, weights=None, progress=True, extra_callbacks=(),
                        force=False, echo=print):
    """Train a patch base learner on fold `fold` of the masked-image cache in `workdir`.

    Args:
        config: ExperimentConfig. Uses `config.patched` and `config.runtime`.
        backbone: str. Registered backbone name.
        fold: int. Validation fold.
        workdir: str or Path. Work directory (manifest.csv, cache/).
        out_dir: str or Path. Run directory; a killed run resumes exactly when rerun.
        weights: str. `imagenet`, `none` or a weights file. Defaults to `None`.
        progress: bool. Keras progress lines. Defaults to `True`.
        extra_callbacks: list of keras callbacks. Defaults to `()`.
        force: bool. Start over even if `out_dir` holds a complete or different run. Defaults to `False`.
        echo: callable(str). Where the "already complete" note goes. Defaults to `print`.

    Returns:
        ResumableFit. Its `history`, `complete` and `describe()` tell what the run did.

    Raises:
        StaleRunError: `out_dir` holds a run made with other settings or inputs (and not `force`).
    """
    from tfflannel.patches.pipeline import evaluation_dataset, training_dataset, training_steps

    cfg = config.patched
    _check_fold(workdir, fold)
    _check_weights(weights)
    size = cfg.patch_size or backbone_config(backbone).input_size
    task = LearnerTask(
        section="patched",
        info=_run_info("patch", backbone, fold, workdir, out_dir, size, cfg.val_patches, cfg.seed),
        workdir=workdir, backbone=backbone, weights=weights,
        training_epochs=lambda batch, drop, first, stop: training_dataset(
            workdir, fold, size, batch, cfg.patches_per_image, cfg.seed, cfg.augment, drop_remainder=drop,
            first_epoch=first, epochs=stop),
        training_steps=lambda batch, drop: training_steps(workdir, fold, batch, cfg.patches_per_image,
                                                          drop_remainder=drop),
        validation_data=lambda: evaluation_dataset(workdir, "valid", fold, cfg.val_patches, size, cfg.seed,
                                                   cfg.images_per_batch),
        l1=cfg.l1)
    return train(config, task, out_dir, progress, extra_callbacks, force, echo)


@chief_writes
def train_global_learner(config, backbone, fold, workdir, out_dir, weights=None, progress=True, extra_callbacks=(),
                         force=False, echo=print):
    """Train an original-FLANNEL whole-image learner on fold `fold` of the manifest in `workdir`.

    Args and returns as `train_patch_learner`; uses `config.global_learner`.
    """
    from tfflannel.learners.global_data import global_evaluation_dataset, global_training_dataset, manifest_partition

    cfg = config.global_learner
    _check_fold(workdir, fold)
    _check_weights(weights)
    crop = cfg.crop_size or backbone_config(backbone).input_size
    resize = max(cfg.resize, crop)
    rows = load_manifest(workdir)
    train_rows, valid_rows = manifest_partition(rows, "train", fold), manifest_partition(rows, "valid", fold)
    if not valid_rows or not train_rows:
        raise InputError(f"{workdir}: fold {fold} has no {'validation' if not valid_rows else 'training'} images")
    task = LearnerTask(
        section="global_learner",
        info=_run_info("global", backbone, fold, workdir, out_dir, crop, 1, cfg.seed, resize=resize),
        workdir=workdir, backbone=backbone, weights=weights,
        training_epochs=lambda batch, drop, first, stop: global_training_dataset(
            train_rows, resize, crop, batch, cfg.seed, drop_remainder=drop, first_epoch=first, epochs=stop),
        training_steps=lambda batch, drop: len(train_rows) // batch if drop else math.ceil(len(train_rows) / batch),
        validation_data=lambda: global_evaluation_dataset(valid_rows, resize, crop),
        schedule=lambda section: [keras.callbacks.LearningRateScheduler(
            step_decay(scale_milestones(section.lr_milestones, section.epochs), section.learning_rate))])
    return train(config, task, out_dir, progress, extra_callbacks, force, echo)
