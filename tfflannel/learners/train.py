"""`train-patch` and `train-global`: one backbone x one fold run (TensorFlow-specific).

Both use the same callbacks: validation macro-F1 (and per-class F1) in
inference mode on a fixed, seeded set of validation patches or centre crops,
ModelCheckpoint and EarlyStopping on it, TensorBoard, CSV history and
BackupAndRestore (a killed run resumes where it stopped).
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import yaml
from sklearn.metrics import f1_score

from tfflannel import CLASS_NAMES
from tfflannel.config import dump_config
from tfflannel.data.manifest import load_manifest
from tfflannel.learners.strategy import make_strategy, replica_batch_size
from tfflannel.models.backbones import backbone_config
from tfflannel.models.classifier import build_classifier
from tfflannel.models.precise_bn import recompute_batchnorm_statistics
from tfflannel.schedules import scale_milestones, step_decay
from tfflannel.utils import write_text_atomic

log = logging.getLogger(__name__)


def predict_image_scores(model, dataset):
    """Run batched evaluation batches (B*K patches, labels, ids) -> (probabilities (N, K, C), labels, ids)."""
    all_probs, all_labels, all_ids = [], [], []
    for patches, labels, ids in dataset:
        count = int(tf.shape(labels)[0])
        probs = np.asarray(model.predict_on_batch(patches))
        all_probs.append(probs.reshape(count, -1, probs.shape[-1]))
        all_labels.append(labels.numpy())
        all_ids += [i.decode() for i in ids.numpy()]
    if not all_probs:
        return np.zeros((0, 1, len(CLASS_NAMES))), np.zeros((0,), int), []
    return np.concatenate(all_probs), np.concatenate(all_labels), all_ids


class ValidationF1(keras.callbacks.Callback):
    """Image-level macro-F1 and per-class F1 (mean probability over the fixed patches) each epoch.

    With `bn_batches`, BatchNorm statistics are first recomputed over that many
    training batches (precise BN), so selection sees the model as inference will.
    """

    def __init__(self, dataset_fn, train_dataset=None, bn_batches=0):
        super().__init__()
        self.dataset_fn, self.train_dataset, self.bn_batches = dataset_fn, train_dataset, bn_batches

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.bn_batches and self.train_dataset is not None:
            recompute_batchnorm_statistics(self.model, (x for x, _ in self.train_dataset.take(self.bn_batches)))
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


def _start_run(config, seed, out_dir, run_info):
    """Seed, precision policy, and the run directory's config.yaml and run.yaml (what predict-base reads)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    if config.runtime.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    dump_config(config, out_dir / "config.yaml")
    write_text_atomic(out_dir / "run.yaml", yaml.safe_dump(run_info, sort_keys=False))
    return out_dir


def _compiled_classifier(cfg, backbone, size, weights, l1=0.0):
    """The base learner with the section's BN momentum and dropout, compiled with AdamW + cross-entropy."""
    model = build_classifier(backbone, size, weights=weights, bn_momentum=cfg.bn_momentum, dropout=cfg.dropout,
                             head=cfg.head, grouped_conv=cfg.grouped_conv)
    _apply_l1(model, l1)
    model.compile(optimizer=keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    return model


def _fit(model, train, epochs, out_dir, callbacks, patience, progress):
    stopping = [keras.callbacks.EarlyStopping(monitor="val_macro_f1", mode="max", patience=patience)] if patience > 0 else []
    callbacks = [
        *callbacks,
        *stopping,
        keras.callbacks.ModelCheckpoint(str(out_dir / "model.keras"), monitor="val_macro_f1", mode="max",
                                        save_best_only=True),
        keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs")),
        keras.callbacks.BackupAndRestore(str(out_dir / "backup")),
    ]
    return model.fit(train, epochs=epochs, callbacks=callbacks, verbose=2 if progress else 0)


def train_patch_learner(config, backbone, fold, workdir, out_dir, weights=None, progress=True, extra_callbacks=()):
    """Train a patch base learner on fold `fold` of the masked-image cache in `workdir`."""
    from tfflannel.patches.pipeline import evaluation_dataset, training_dataset

    cfg = config.patched
    size = cfg.patch_size or backbone_config(backbone).input_size
    out_dir = _start_run(config, cfg.seed, out_dir, {"kind": "patch", "backbone": backbone, "fold": fold,
                                                     "workdir": str(Path(workdir).resolve()), "input_size": size})
    strategy = make_strategy(config.runtime.strategy)
    batch = replica_batch_size(cfg.batch_size, strategy)
    multi = strategy.num_replicas_in_sync > 1
    train = training_dataset(workdir, fold, size, batch, cfg.patches_per_image, cfg.seed, cfg.augment,
                             drop_remainder=multi)
    with strategy.scope():
        model = _compiled_classifier(cfg, backbone, size, weights, cfg.l1)
    validation = ValidationF1(lambda: evaluation_dataset(workdir, "valid", fold, cfg.val_patches, size, cfg.seed,
                                                         cfg.images_per_batch),
                              train, 0 if multi else cfg.precise_bn_batches)
    callbacks = [validation, SamplePatchImages(out_dir / "logs", train), *extra_callbacks]
    return _fit(model, train, cfg.epochs, out_dir, callbacks, cfg.early_stopping_patience, progress)


def train_global_learner(config, backbone, fold, workdir, out_dir, weights=None, progress=True, extra_callbacks=()):
    """Train an original-FLANNEL whole-image learner on fold `fold` of the manifest in `workdir`."""
    from tfflannel.learners.global_data import global_evaluation_dataset, global_training_dataset, manifest_partition

    cfg = config.global_learner
    crop = cfg.crop_size or backbone_config(backbone).input_size
    resize = max(cfg.resize, crop)
    rows = load_manifest(workdir)
    train_rows, valid_rows = manifest_partition(rows, "train", fold), manifest_partition(rows, "valid", fold)
    if not valid_rows:
        raise ValueError(f"{workdir}: fold {fold} has no validation images")
    out_dir = _start_run(config, cfg.seed, out_dir, {"kind": "global", "backbone": backbone, "fold": fold,
                                                     "workdir": str(Path(workdir).resolve()), "input_size": crop,
                                                     "resize": resize})
    strategy = make_strategy(config.runtime.strategy)
    batch = replica_batch_size(cfg.batch_size, strategy)
    train = global_training_dataset(train_rows, resize, crop, batch, cfg.seed,
                                    drop_remainder=strategy.num_replicas_in_sync > 1)
    with strategy.scope():
        model = _compiled_classifier(cfg, backbone, crop, weights)
    validation = ValidationF1(lambda: global_evaluation_dataset(valid_rows, resize, crop), train,
                              0 if strategy.num_replicas_in_sync > 1 else cfg.precise_bn_batches)
    schedule = keras.callbacks.LearningRateScheduler(step_decay(scale_milestones(cfg.lr_milestones, cfg.epochs), cfg.learning_rate))
    callbacks = [validation, schedule, SamplePatchImages(out_dir / "logs", train), *extra_callbacks]
    return _fit(model, train, cfg.epochs, out_dir, callbacks, cfg.early_stopping_patience, progress)
