"""`train-ensemble`: fit a FLANNEL ensemble on base-learner predictions (TensorFlow-specific).

Predictions are joined by image_id, never by row order; a missing or extra id
is an error naming it. By default the ensemble learns from the fold's
validation predictions, which are out-of-fold for every base learner, so it
never learns from in-sample scores (`--fit-on train` reproduces the original).
A patient-grouped part of those predictions is held out to select the
checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import yaml
from sklearn.model_selection import GroupShuffleSplit

from tfflannel import CLASS_NAMES
from tfflannel.config import dump_config
from tfflannel.errors import InputError
from tfflannel.learners.infer import PREDICTION_COLUMNS, prediction_row
from tfflannel.learners.strategy import make_strategy
from tfflannel.models.ensemble import build_ensemble, inverse_frequency_alpha
from tfflannel.schedules import step_decay
from tfflannel.utils import read_csv, write_csv_atomic, write_text_atomic


class JoinError(InputError):
    """Base-learner prediction files that do not cover the same images."""


def run_name(run_dir):
    """`kind:backbone` (or `ensemble:kind`) from a run's run.yaml."""
    info = yaml.safe_load((Path(run_dir) / "run.yaml").read_text())
    return info.get("name") or f"{info['kind']}:{info.get('backbone', '')}", info


def join_predictions(run_dirs, role, score="prob"):
    """Scores of several runs for one partition, aligned by image_id.

    Returns:
        (image_ids sorted, labels (N,) int, scores (N, L * C) float32)
    """
    tables = []
    for run_dir in run_dirs:
        path = Path(run_dir) / "predictions" / f"{role}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run `predict-base --run {run_dir}` first")
        rows = read_csv(path)
        if rows and list(rows[0]) != list(PREDICTION_COLUMNS):
            raise JoinError(f"{path}: unexpected columns {list(rows[0])}")
        table = {row["image_id"]: row for row in rows}
        if len(table) != len(rows):
            raise JoinError(f"{path}: duplicate image_id rows")
        tables.append((path, table))
    reference_path, reference = tables[0]
    ids = sorted(reference)
    for path, table in tables[1:]:
        missing, extra = sorted(set(ids) - set(table)), sorted(set(table) - set(ids))
        if missing or extra:
            raise JoinError(f"{path} does not cover the same images as {reference_path}: "
                            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                            f"extra {extra[:5]}{'...' if len(extra) > 5 else ''}")
        for image_id in ids:
            if table[image_id]["label"] != reference[image_id]["label"]:
                raise JoinError(f"{path}: image {image_id} has label {table[image_id]['label']!r}, "
                                f"{reference_path} says {reference[image_id]['label']!r}")
    labels = np.array([CLASS_NAMES.index(reference[i]["label"]) for i in ids], int)
    scores = np.array([[float(table[i][f"{score}_{c}"]) for _, table in tables for c in CLASS_NAMES] for i in ids],
                      np.float32)
    return ids, labels, scores


def _patients(workdir, ids):
    from tfflannel.data.manifest import load_manifest

    table = {row["image_id"]: row["group_id"] for row in load_manifest(workdir)}
    return [table.get(i, i) for i in ids]


def train_ensemble(config, run_dirs, out_dir, fold=None, progress=True):
    """Fit, select, and write RUNDIR/{model.keras, learner_weights.json, predictions/test.csv, ...}."""
    cfg = config.ensemble
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    infos = [run_name(r) for r in run_dirs]
    folds = {int(info["fold"]) for _, info in infos}
    if len(folds) != 1 or (fold is not None and folds != {int(fold)}):
        raise JoinError(f"all runs must come from one fold{'' if fold is None else f' ({fold})'}; found folds {sorted(folds)}")
    fold = folds.pop()
    keras.utils.set_random_seed(cfg.seed)
    ids, labels, scores = join_predictions(run_dirs, cfg.fit_on, cfg.score)
    groups = _patients(infos[0][1]["workdir"], ids)
    fit_rows, hold_rows = next(GroupShuffleSplit(1, test_size=cfg.holdout_share, random_state=cfg.seed)
                               .split(scores, labels, groups))
    alpha = inverse_frequency_alpha(labels[fit_rows], len(CLASS_NAMES))
    dump_config(config, out_dir / "config.yaml")
    names = [name for name, _ in infos]
    run_info = {"kind": "ensemble", "name": f"ensemble:{cfg.kind}({'+'.join(names)})", "fold": fold,
                "workdir": infos[0][1]["workdir"], "runs": [str(Path(r).resolve()) for r in run_dirs],
                "learners": names, "score": cfg.score, "fit_on": cfg.fit_on}
    write_text_atomic(out_dir / "run.yaml", yaml.safe_dump(run_info, sort_keys=False))

    strategy = make_strategy(config.runtime.strategy)
    with strategy.scope():
        model = build_ensemble(cfg.kind, len(run_dirs), len(CLASS_NAMES))
        model.compile(optimizer=keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay),
                      loss=keras.losses.CategoricalFocalCrossentropy(alpha=alpha, gamma=cfg.gamma),
                      metrics=[keras.metrics.F1Score(average="macro", name="macro_f1"), "accuracy"])
    one_hot = np.eye(len(CLASS_NAMES), dtype=np.float32)
    schedule = step_decay(cfg.lr_milestones, cfg.learning_rate)       # lr_milestones are epochs here
    callbacks = [
        keras.callbacks.LearningRateScheduler(schedule),
        keras.callbacks.CSVLogger(str(out_dir / "history.csv")),
        keras.callbacks.TensorBoard(log_dir=str(out_dir / "logs")),
    ]
    validation = None
    if len(hold_rows):
        validation = (scores[hold_rows], one_hot[labels[hold_rows]])
        callbacks.append(keras.callbacks.ModelCheckpoint(str(out_dir / "model.keras"), monitor="val_loss", mode="min",
                                                         save_best_only=True))
    model.fit(scores[fit_rows], one_hot[labels[fit_rows]], batch_size=cfg.batch_size, epochs=cfg.epochs,
              validation_data=validation, callbacks=callbacks, shuffle=True, verbose=2 if progress else 0)
    if not len(hold_rows) or not (out_dir / "model.keras").exists():
        model.save(out_dir / "model.keras")
    best = keras.saving.load_model(out_dir / "model.keras", compile=False)

    test_ids, test_labels, test_scores = join_predictions(run_dirs, "test", cfg.score)
    probabilities = np.asarray(best.predict(test_scores, verbose=0))
    rows = [prediction_row(image_id, label, one_hot[int(np.argmax(prob))], prob)
            for image_id, label, prob in zip(test_ids, test_labels, probabilities, strict=True)]
    write_csv_atomic(out_dir / "predictions" / "test.csv", rows, PREDICTION_COLUMNS)
    summary = {"learners": names, "alpha": alpha, "fit_images": int(len(fit_rows)), "holdout_images": int(len(hold_rows))}
    if cfg.kind != "mlp":
        weights = np.asarray(keras.Model(best.input, best.get_layer("learner_weights").output).predict(test_scores, verbose=0))
        summary["mean_weight_on_test"] = {name: float(w) for name, w in zip(names, weights.mean(axis=0), strict=True)}
        summary["std_weight_on_test"] = {name: float(w) for name, w in zip(names, weights.std(axis=0), strict=True)}
    write_text_atomic(out_dir / "learner_weights.json", json.dumps(summary, indent=2) + "\n")
    return summary
