"""`train-ensemble`: fit a FLANNEL ensemble on base-learner predictions (TensorFlow-specific).

Predictions are joined by image_id, never by row order; a missing or extra id
is an error naming it. By default the ensemble learns from the fold's
validation predictions, which are out-of-fold for every base learner, so it
never learns from in-sample scores (`--fit-on train` reproduces the original).
A patient-grouped part of those predictions is held out to select the
checkpoint. Training resumes exactly after a kill (`ResumableFit`; each epoch's
shuffle derives from (seed, epoch)); the run records the hashes of the member
predictions it was fit on, so a rerun after they changed stops instead of
reusing a stale ensemble.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from tfflannel import CLASS_NAMES
from tfflannel.config import dump_config
from tfflannel.ensemble.calibration import calibrate_ensemble, calibration_is_current
from tfflannel.errors import InputError
from tfflannel.learners.strategy import chief_writes
from tfflannel.models.ensemble import build_ensemble, inverse_frequency_alpha
from tfflannel.predictions import read_predictions, write_predictions
from tfflannel.provenance import read_provenance
from tfflannel.resume_state import member_key
from tfflannel.run_info import RunInfo, load_run_info, relative_to_run, save_run_info
from tfflannel.schedules import scale_milestones, step_decay
from tfflannel.training import TrainingTask, train
from tfflannel.utils import file_sha256, write_text_atomic


class JoinError(InputError):
    """Base-learner prediction files that do not cover the same images."""


def run_name(run_dir):
    """(`kind:backbone` or the ensemble's name, RunInfo) of a run directory."""
    info = load_run_info(run_dir)
    return info.display_name, info


def join_predictions(run_dirs, role, score="prob"):
    """Scores of several runs for one partition, aligned by image_id.

    Args:
        run_dirs: list of str or Path. Run directories with `predictions/<role>.csv`; their order is the order
            of the learners in the scores.
        role: str. The partition (`valid`, `test`, ...).
        score: str. `prob` (mean probabilities) or `vote` (vote shares) columns. Defaults to `"prob"`.

    Returns:
        tuple: `(image_ids, labels, scores)`: the image ids sorted, labels (N,) int, and scores (N, L * C)
        float32, learner-major (the C columns of learner 0, then learner 1, ...).

    Raises:
        JoinError: the runs' files do not cover the same images, disagree on a label, or break the schema.
    """
    tables = []
    for run_dir in run_dirs:
        try:
            table = read_predictions(run_dir, role)
        except InputError as error:
            raise JoinError(str(error)) from error
        tables.append((table, dict(zip(table.image_ids, range(len(table.image_ids)), strict=True))))
    reference, reference_rows = tables[0]
    ids = sorted(reference_rows)
    for table, rows in tables[1:]:
        missing, extra = sorted(set(ids) - set(rows)), sorted(set(rows) - set(ids))
        if missing or extra:
            raise JoinError(f"{table.path} does not cover the same images as {reference.path}: "
                            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                            f"extra {extra[:5]}{'...' if len(extra) > 5 else ''}")
        for image_id in ids:
            label, expected = table.labels[rows[image_id]], reference.labels[reference_rows[image_id]]
            if label != expected:
                raise JoinError(f"{table.path}: image {image_id} has label {CLASS_NAMES[label]!r}, "
                                f"{reference.path} says {CLASS_NAMES[expected]!r}")
    labels = np.array([reference.labels[reference_rows[i]] for i in ids], int)
    scores = np.concatenate([table.scores(score)[[rows[i] for i in ids]] for table, rows in tables], axis=1)
    return ids, labels, scores.astype(np.float32).reshape(len(ids), -1)


class EpochBatches(keras.utils.PyDataset):
    """Batches of (x, y) in an order drawn from (seed, epoch) for epochs `first_epoch`, `first_epoch + 1`, ..."""

    def __init__(self, x, y, batch_size, seed=0, first_epoch=0, drop_remainder=False):
        super().__init__()
        self.x, self.y, self.batch_size, self.seed, self.epoch = x, y, batch_size, seed, first_epoch
        self.drop_remainder = drop_remainder
        self.order = self._order()

    def _order(self):
        from tfflannel.resume import epoch_seed

        return np.random.default_rng(epoch_seed(self.seed, self.epoch)).permutation(len(self.x))

    def __len__(self):
        return len(self.x) // self.batch_size if self.drop_remainder else math.ceil(len(self.x) / self.batch_size)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.x[rows], self.y[rows]

    def on_epoch_end(self):
        """Advance to the next epoch and draw its order from (seed, epoch)."""
        self.epoch += 1
        self.order = self._order()


def _patients(workdir, ids):
    from tfflannel.data.manifest import load_manifest

    table = {row["image_id"]: row["group_id"] for row in load_manifest(workdir)}
    return [table.get(i, i) for i in ids]


def _member_provenance(run_dirs, roles):
    """Per member: the hash of each prediction file used, and the K and seed that made them."""
    members = {}
    for index, run_dir in enumerate(run_dirs):
        provenance = read_provenance(run_dir)
        identity = provenance.identity if provenance is not None else None
        members[member_key(index, "k")] = identity.k if identity is not None else None
        members[member_key(index, "seed")] = identity.seed if identity is not None else None
        for role in roles:
            members[member_key(index, f"{role}_sha256")] = file_sha256(Path(run_dir) / "predictions" / f"{role}.csv")
    return members


def _calibration_films(model, run_dirs, cfg, labels, scores, hold_rows, groups):
    """(labels, uncalibrated probabilities, description) of the validation films the temperature is fitted on.

    Never a test film: with `fit_on: valid` the patients held out of the weight fit (all validation films, in
    sample, when there is no hold-out); with `fit_on: train` all validation films.
    """
    if cfg.fit_on == "train":
        _, labels, scores = join_predictions(run_dirs, "valid", cfg.score)
        description = "all validation films; the weights were fit on train"
    elif len(hold_rows):
        labels, scores = labels[hold_rows], scores[hold_rows]
        description = (f"validation films of the {len({groups[i] for i in hold_rows})} patients held out of the "
                       "weight fit")
    else:
        description = "all validation films, which also fit the weights (no hold-out): in sample"
    probabilities = np.asarray(model.predict(scores, verbose=0)) if len(scores) else np.zeros((0, len(CLASS_NAMES)))
    return labels, probabilities, description


class EnsembleTask(TrainingTask):
    """A FLANNEL ensemble's training (`train-ensemble`) as a task of the one trainer (`training.train`).

    Its inputs are the members' predictions of the fold's `ensemble.fit_on` partition, joined by image id;
    the fingerprint holds the hashes of every prediction file used, so new predictions make the run stale.

    Args:
        config: ExperimentConfig. Uses `config.ensemble`.
        run_dirs: list of str or Path. Base-learner runs with predictions/, in the ensemble's input order.
        fold: int. Expected fold of the runs; `None` accepts their common fold. Defaults to `None`.

    Raises:
        JoinError: the runs come from several folds (or not `fold`), or their predictions do not join.
    """

    section = "ensemble"
    mode = "min"
    ignore = ("ensemble.calibration",)     # the temperature is fitted after the weights and recorded apart
    distributed = True

    def __init__(self, config, run_dirs, fold=None):
        cfg = config.ensemble
        infos = [run_name(r) for r in run_dirs]
        folds = {info.fold for _, info in infos}
        if len(folds) != 1 or (fold is not None and folds != {int(fold)}):
            wanted = "" if fold is None else f" ({fold})"
            raise JoinError(f"all runs must come from one fold{wanted}; found folds {sorted(folds)}")
        self.run_dirs, self.fold, self.first = list(run_dirs), folds.pop(), infos[0][1]
        self.names, self.calibration = [name for name, _ in infos], cfg.calibration
        self.members = {"runs": [str(Path(r).resolve()) for r in run_dirs],
                        **_member_provenance(run_dirs, (cfg.fit_on, "test"))}
        self.ids, self.labels, self.scores = join_predictions(run_dirs, cfg.fit_on, cfg.score)
        self.holdout = cfg.holdout_share > 0 and len(self.ids) > 1
        self.monitor = "val_loss" if self.holdout else None

    def fingerprint(self, config):
        """The member runs and the hashes, K and seed of their predictions."""
        return self.members

    def completed(self, fit, out_dir):
        """learner_weights.json of a complete run whose test predictions and calibration are current, else `None`."""
        summary = out_dir / "learner_weights.json"
        if summary.is_file() and (out_dir / "predictions" / "test.csv").is_file() \
                and calibration_is_current(out_dir, self.run_dirs, self.calibration):
            return json.loads(summary.read_text())
        return None

    def prepare(self, config, out_dir):
        """Write run.yaml and config.yaml; split the films into a fit and a patient-grouped hold-out part."""
        cfg = config.ensemble
        _record_run(out_dir, config, self.run_dirs, self.names, self.fold, self.first, self.members)
        self.groups = _patients(self.first.workdir_path(self.run_dirs[0]), self.ids)
        if self.holdout:
            self.fit_rows, self.hold_rows = next(GroupShuffleSplit(1, test_size=cfg.holdout_share,
                                                                   random_state=cfg.seed)
                                                 .split(self.scores, self.labels, self.groups))
        else:
            self.fit_rows, self.hold_rows = np.arange(len(self.ids)), np.zeros((0,), int)
        self.alpha = inverse_frequency_alpha(self.labels[self.fit_rows], len(CLASS_NAMES))

    def training_data(self, config, first_epoch, batch_size, drop_remainder):
        """The fit films' scores and one-hot labels in an order drawn from (seed, epoch); the hold-out films."""
        one_hot = np.eye(len(CLASS_NAMES), dtype=np.float32)
        fit_rows, hold_rows = self.fit_rows, self.hold_rows
        validation = (self.scores[hold_rows], one_hot[self.labels[hold_rows]]) if len(hold_rows) else None
        batches = EpochBatches(self.scores[fit_rows], one_hot[self.labels[fit_rows]], batch_size, config.ensemble.seed,
                               first_epoch, drop_remainder=drop_remainder)
        return batches, {"validation_data": validation}

    def build_model(self, config):
        """The ensemble head, compiled with AdamW and the focal loss (alpha: inverse class frequency)."""
        cfg = config.ensemble
        model = build_ensemble(cfg.kind, len(self.run_dirs), len(CLASS_NAMES))
        model.compile(optimizer=keras.optimizers.AdamW(cfg.learning_rate, weight_decay=cfg.weight_decay),
                      loss=keras.losses.CategoricalFocalCrossentropy(alpha=self.alpha, gamma=cfg.gamma),
                      metrics=[keras.metrics.F1Score(average="macro", name="macro_f1"), "accuracy"])
        return model

    def callbacks(self, config, model, data, out_dir):
        """The step-decay learning-rate schedule."""
        cfg = config.ensemble
        return [keras.callbacks.LearningRateScheduler(step_decay(scale_milestones(cfg.lr_milestones, cfg.epochs),
                                                                 cfg.learning_rate))]

    def finalise(self, config, fit, out_dir):
        """Test predictions, the temperature and learner_weights.json of the kept model; returns the summary."""
        summary = _finish(out_dir, self.run_dirs, config.ensemble, self.names, self.alpha,
                          (self.labels, self.scores, self.groups), self.fit_rows, self.hold_rows)
        write_text_atomic(out_dir / "learner_weights.json", json.dumps(summary, indent=2) + "\n")
        return summary


@chief_writes
def train_ensemble(config, run_dirs, out_dir, fold=None, progress=True, force=False, echo=print):
    """Fit, select, and write RUNDIR/{model.keras, learner_weights.json, predictions/test.csv, ...}.

    Args:
        config: ExperimentConfig. Uses `config.ensemble`.
        run_dirs: list of str or Path. Base-learner runs with predictions/, in the ensemble's input order.
        out_dir: str or Path. The ensemble run directory; a killed run resumes exactly when rerun.
        fold: int. Expected fold of the runs; `None` accepts their common fold. Defaults to `None`.
        progress: bool. Keras progress lines. Defaults to `True`.
        force: bool. Start over even if `out_dir` holds a complete or different ensemble. Defaults to `False`.
        echo: callable(str). Where the "already complete" note goes. Defaults to `print`.

    Returns:
        dict. What learner_weights.json holds.

    Raises:
        StaleRunError: `out_dir` was fit on other predictions or settings (and not `force`).
    """
    return train(config, EnsembleTask(config, run_dirs, fold), out_dir, progress, force=force, echo=echo)


def _finish(out_dir, run_dirs, cfg, names, alpha, fit_data, fit_rows, hold_rows):
    """Test predictions of the kept model, its temperature (calibration.json), and learner_weights.json's content."""
    labels, scores, groups = fit_data
    best = keras.saving.load_model(out_dir / "model.keras", compile=False)
    test_ids, test_labels, test_scores = join_predictions(run_dirs, "test", cfg.score)
    probabilities = np.asarray(best.predict(test_scores, verbose=0))
    one_hot = np.eye(len(CLASS_NAMES), dtype=np.float32)
    votes = one_hot[np.argmax(probabilities, axis=-1)] if len(probabilities) else probabilities
    write_predictions(out_dir, "test", test_ids, test_labels, votes, probabilities)
    calibration = calibrate_ensemble(out_dir, run_dirs, cfg.calibration,
                                     *_calibration_films(best, run_dirs, cfg, labels, scores, hold_rows, groups))
    return {"learners": names, "alpha": alpha, "fit_images": int(len(fit_rows)),
            "holdout_images": int(len(hold_rows)), "temperature": calibration["temperature"],
            **_weights_on_test(best, names, test_scores)}


def _record_run(out_dir, config, run_dirs, names, fold, first, fingerprint):
    """Write the ensemble's run.yaml (members, the K their scores were made with) and config.yaml."""
    cfg = config.ensemble
    member_k = {fingerprint.get(member_key(i, "k")) for i in range(len(run_dirs))}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_run_info(out_dir, RunInfo(
        kind="ensemble", fold=fold, workdir=relative_to_run(first.workdir_path(run_dirs[0]), out_dir),
        k=member_k.pop() if len(member_k) == 1 else None, seed=cfg.seed,
        name=f"ensemble:{cfg.kind}({'+'.join(names)})", runs=[relative_to_run(r, out_dir) for r in run_dirs],
        learners=names, score=cfg.score, fit_on=cfg.fit_on, manifest_sha256=first.manifest_sha256))
    dump_config(config, out_dir / "config.yaml")


def _weights_on_test(model, names, test_scores):
    """Mean and std of each learner's GENet/FLANNEL weight over the test films (nothing for `mlp`)."""
    try:
        layer = model.get_layer("learner_weights")
    except ValueError:
        return {}
    weights = np.asarray(keras.Model(model.input, layer.output).predict(test_scores, verbose=0))
    return {"mean_weight_on_test": {name: float(w) for name, w in zip(names, weights.mean(axis=0), strict=True)},
            "std_weight_on_test": {name: float(w) for name, w in zip(names, weights.std(axis=0), strict=True)}}
