"""`predict-base`: per-image scores of a trained base learner for the fold's train, valid and test partitions.

Each image's K patches (fixed, seeded centres) go through the model in one
batched forward pass together with the other images of the batch (B x K
patches per call), never one patch per call. Written per image: the vote
fractions (share of patches predicting each class, the paper's majority-vote
confidence) and the mean softmax probabilities. Global learners give K = 1
(centre crop). Rows are keyed by image_id so that later stages join by id.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import yaml
from tqdm.auto import tqdm

from tfflannel import CLASS_NAMES
from tfflannel.film_pipeline import aggregate_scores
from tfflannel.learners.train import predict_image_scores
from tfflannel.utils import write_csv_atomic

ROLES = ("train", "valid", "test")
PREDICTION_COLUMNS = ("image_id", "label") + tuple(f"vote_{c}" for c in CLASS_NAMES) + tuple(f"prob_{c}" for c in CLASS_NAMES)


def prediction_row(image_id, label, votes, probabilities):
    """One row of `predictions/*.csv`: image_id, label name, vote_<class>..., prob_<class>..."""
    row = {"image_id": image_id, "label": CLASS_NAMES[int(label)]}
    row.update({f"vote_{c}": f"{float(v):.6f}" for c, v in zip(CLASS_NAMES, votes, strict=True)})
    row.update({f"prob_{c}": f"{float(p):.6f}" for c, p in zip(CLASS_NAMES, probabilities, strict=True)})
    return row


def read_run(run_dir):
    """A run directory's model and its run.yaml (kind, backbone, fold, workdir, input size)."""
    import tfflannel.models.classifier  # noqa: F401  (registers GrayToImageNet and the backbone layers)

    run_dir = Path(run_dir)
    info_path = run_dir / "run.yaml"
    if not info_path.is_file() or not (run_dir / "model.keras").is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished base-learner run (needs run.yaml and model.keras)")
    info = yaml.safe_load(info_path.read_text())
    return keras.saving.load_model(run_dir / "model.keras", compile=False), info


def predict_base(run_dir, workdir=None, k=100, images_per_batch=4, seed=0, roles=ROLES, progress=True):
    """Write RUNDIR/predictions/{train,valid,test}.csv; returns {role: images/s}."""
    from tfflannel.data.manifest import load_manifest
    from tfflannel.learners.global_data import global_evaluation_dataset, manifest_partition
    from tfflannel.patches.pipeline import evaluation_dataset

    model, info = read_run(run_dir)
    workdir = Path(workdir or info["workdir"])
    fold, size = int(info["fold"]), int(info["input_size"])
    rows = load_manifest(workdir)
    speeds = {}
    for role in roles:
        partition = manifest_partition(rows, role, fold)
        if info["kind"] == "global":
            dataset = global_evaluation_dataset(partition, int(info["resize"]), size, images_per_batch)
        else:
            dataset = evaluation_dataset(workdir, role, fold, k, size, seed, images_per_batch)
        started = time.time()
        bar = tqdm(total=len(partition), desc=f"predict-base {role}", unit="img", disable=not progress)
        parts = []
        for batch in dataset:
            parts.append(predict_image_scores(model, [batch]))
            bar.update(len(parts[-1][2]))
            bar.set_postfix(img_per_s=f"{bar.n / max(time.time() - started, 1e-9):.1f}")
        bar.close()
        probs = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, 1, len(CLASS_NAMES)))
        labels = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0,), int)
        ids = [i for p in parts for i in p[2]]
        votes, means = (t.numpy() for t in aggregate_scores(probs)) if len(probs) else (probs[:, 0], probs[:, 0])
        out_rows = [prediction_row(*fields) for fields in zip(ids, labels, votes, means, strict=True)]
        write_csv_atomic(Path(run_dir) / "predictions" / f"{role}.csv", out_rows, PREDICTION_COLUMNS)
        speeds[role] = len(ids) / max(time.time() - started, 1e-9)
    return speeds
