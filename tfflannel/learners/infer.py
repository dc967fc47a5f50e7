"""`predict-base`: per-image scores of a trained base learner for the fold's train, valid and test partitions.

Each image's K patches (fixed, seeded centres) go through the model in one
batched forward pass together with the other images of the batch (B x K
patches per call), never one patch per call. Written per image: the vote
fractions (share of patches predicting each class, the paper's majority-vote
confidence) and the mean softmax probabilities. Global learners give K = 1
(centre crop). Rows are keyed by image_id so that later stages join by id.

`predictions/provenance.json` records what made the files (the model's hash,
the manifest's and cache index's hashes, K, seed) and which partitions are
done: a rerun with nothing changed does nothing, a killed run finishes the
missing partitions, and a change recomputes everything, naming what changed.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfflannel import CLASS_NAMES
from tfflannel.errors import InputError
from tfflannel.film_pipeline import aggregate_scores
from tfflannel.predictions import (  # noqa: F401
    PREDICTION_COLUMNS,
    ROLES,
    prediction_row,
    predictions_path,
    write_predictions,
)
from tfflannel.provenance import PredictionIdentity, Provenance, read_provenance, write_provenance
from tfflannel.run_info import load_run_info, manifest_sha256
from tfflannel.segmentation.cache_record import recorded_cache_key
from tfflannel.utils import diff_keys, file_sha256


def predict_image_scores(model, dataset):
    """Run batched evaluation batches (B*K patches, labels, ids) -> (probabilities (N, K, C), labels, ids).

    A last, smaller batch is zero-padded to the first batch's size (and the padding's outputs
    dropped), so the model's predict function sees one input shape and is traced once per model.

    Args:
        model: keras.Model. A classifier: (B*K, S, S, 1) -> (B*K, C) probabilities.
        dataset: iterable of `(patches, labels, ids)` tensors: (B*K, S, S, 1) patches, the K patches of an
            image consecutive, (B,) int labels and (B,) byte-string ids.

    Returns:
        tuple: `(probabilities, labels, ids)`: (N, K, C) per-patch probabilities, (N,) int labels and a list
        of N str ids; a (0, 1, 4) array, an empty label array and `[]` for an empty dataset.
    """
    all_probs, all_labels, all_ids = [], [], []
    full = None
    for patches, labels, ids in dataset:
        count, rows = int(tf.shape(labels)[0]), int(tf.shape(patches)[0])
        full = full or rows
        if rows < full:
            patches = tf.pad(patches, [[0, full - rows]] + [[0, 0]] * (len(patches.shape) - 1))
        probs = np.asarray(model.predict_on_batch(patches))[:rows]
        all_probs.append(probs.reshape(count, -1, probs.shape[-1]))
        all_labels.append(labels.numpy())
        all_ids += [i.decode() for i in ids.numpy()]
    if not all_probs:
        return np.zeros((0, 1, len(CLASS_NAMES))), np.zeros((0,), int), []
    return np.concatenate(all_probs), np.concatenate(all_labels), all_ids


def read_run(run_dir):
    """A base-learner run's model and its RunInfo.

    Raises:
        FileNotFoundError: no run.yaml or no model.keras (the run never finished an epoch).
        InputError: `run_dir` is a train-ensemble run, not a base learner.
    """
    import tfflannel.models.classifier  # noqa: F401  (registers GrayToImageNet and the backbone layers)

    run_dir = Path(run_dir)
    info = load_run_info(run_dir)
    if info.kind == "ensemble":
        raise InputError(f"{run_dir} is a train-ensemble run; give a train-patch or train-global run (one of its "
                         f"learners: {', '.join(str(p) for p in info.run_paths(run_dir))})")
    if not (run_dir / "model.keras").is_file():
        raise FileNotFoundError(f"{run_dir}: no model.keras; train the run first (rerun its train command)")
    return keras.saving.load_model(run_dir / "model.keras", compile=False), info


def prediction_identity(run_dir, info, workdir, k, seed, images_per_batch):
    """What predict-base's outputs depend on (stored in predictions/provenance.json).

    Returns:
        PredictionIdentity.
    """
    workdir = Path(workdir)
    return PredictionIdentity(
        model_sha256=file_sha256(Path(run_dir) / "model.keras"), kind=info.kind, backbone=info.backbone,
        fold=info.fold, input_size=info.input_size, resize=info.resize, manifest_sha256=manifest_sha256(workdir),
        cache_index_sha256=file_sha256(workdir / "cache" / "index.csv") if info.kind == "patch" else None,
        k=int(k), seed=int(seed), images_per_batch=int(images_per_batch))


def _check_cache_is_the_trained_one(run_dir, info, workdir):
    """A patch run is evaluated on a cache built like the one it was trained on (its recorded `cache_key`).

    Raises:
        InputError: the work directory's cache was rebuilt with another segmenter or view since training.
    """
    current = recorded_cache_key(workdir) if info.kind == "patch" and info.cache_key else None
    if current is None:
        return
    changed = diff_keys(info.cache_key, current)
    if changed:
        raise InputError(f"{Path(workdir) / 'cache'} was rebuilt since {run_dir} was trained on it "
                         f"({'; '.join(changed)}); rerun `segment` with the run's settings (its config.yaml), or "
                         "retrain the run")


def _roles_done(run_dir, identity, force, echo):
    """The partitions whose predictions were made with `identity` and are still on disk (none with `force`).

    Says on `echo` when the recorded inputs differ from `identity` (and what changed). With `force` the
    recorded provenance is not read (so an unreadable one is simply rewritten).
    """
    recorded = None if force else read_provenance(run_dir)
    if recorded is None or recorded.identity is None:
        return set()
    if recorded.identity != identity:
        changes = "; ".join(diff_keys(recorded.identity.as_dict(), identity.as_dict()))
        echo(f"{run_dir / 'predictions'}: recomputing, inputs changed: {changes}")
        return set()
    return {role for role in recorded.done if predictions_path(run_dir, role).is_file()}


def _counted(batches, bar, started):
    """Yield `batches`, advancing the progress `bar` by each batch's images and showing images/s since `started`."""
    for batch in batches:
        yield batch
        bar.update(int(tf.shape(batch[1])[0]))
        bar.set_postfix(img_per_s=f"{bar.n / max(time.time() - started, 1e-9):.1f}")


def predict_base(run_dir, workdir=None, k=100, images_per_batch=4, seed=0, roles=ROLES, progress=True, force=False,
                 echo=print):
    """Write RUNDIR/predictions/{train,valid,test}.csv and provenance.json.

    Args:
        run_dir: str or Path. A train-patch or train-global run.
        workdir: str or Path. Work directory; defaults to the run's own.
        k: int. Patches per image (global runs always use 1). Defaults to `100`.
        images_per_batch: int. Images per forward pass (B x K patches). Defaults to `4`.
        seed: int. Seed of the patch centres. Defaults to `0`.
        roles: tuple of str. Partitions to predict. Defaults to all three.
        progress: bool. Progress bars. Defaults to `True`.
        force: bool. Recompute even partitions that are up to date. Defaults to `False`.
        echo: callable(str). Where up-to-date and recompute notes go. Defaults to `print`.

    Returns:
        dict. {role: images/s} for the partitions computed now (up-to-date ones are left out).

    Raises:
        InputError: K or images_per_batch below 1 (before anything is read or written).
    """
    from tfflannel.data.manifest import load_manifest
    from tfflannel.learners.global_data import global_evaluation_dataset, manifest_partition
    from tfflannel.patches.pipeline import evaluation_dataset

    if int(k) < 1 or int(images_per_batch) < 1:
        raise InputError(f"K (--k / inference.k) and inference.images_per_batch must be >= 1. "
                         f"Received: k={k}, images_per_batch={images_per_batch}.")
    run_dir = Path(run_dir)
    model, info = read_run(run_dir)
    workdir = Path(workdir) if workdir else info.workdir_path(run_dir)
    k = 1 if info.kind == "global" else int(k)
    _check_cache_is_the_trained_one(run_dir, info, workdir)
    identity = prediction_identity(run_dir, info, workdir, k, seed, images_per_batch)
    done = _roles_done(run_dir, identity, force, echo)
    todo = [role for role in roles if role not in done]
    if not todo:
        echo(f"{run_dir / 'predictions'}: up to date (K={k}, seed {seed}); --force recomputes")
        return {}
    write_provenance(run_dir, Provenance(identity, tuple(sorted(done))))
    fold, size = info.fold, int(info.input_size)
    rows = load_manifest(workdir)
    speeds = {}
    for role in todo:
        partition = manifest_partition(rows, role, fold)
        if info.kind == "global":
            dataset = global_evaluation_dataset(partition, int(info.resize), size, images_per_batch)
        else:
            dataset = evaluation_dataset(workdir, role, fold, k, size, seed, images_per_batch)
        started = time.time()
        bar = tqdm(total=len(partition), desc=f"predict-base {role}", unit="img", disable=not progress)
        probs, labels, ids = predict_image_scores(model, _counted(dataset, bar, started))
        bar.close()
        votes, means = (t.numpy() for t in aggregate_scores(probs)) if len(probs) else (probs[:, 0], probs[:, 0])
        write_predictions(run_dir, role, ids, labels, votes, means)
        done.add(role)
        write_provenance(run_dir, Provenance(identity, tuple(sorted(done))))
        speeds[role] = len(ids) / max(time.time() - started, 1e-9)
    return speeds
