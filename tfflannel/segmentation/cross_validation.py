"""Patient-grouped k-fold cross-validation of a lung segmenter recipe (`tools/train_segmenter.py --cv`).

Each fold trains the recipe on the other folds' patients with no validation split (the last epoch
is kept, so the held-out fold never selects anything) and scores the held-out films at the ground
truth's own resolution in four ways: with and without the film pipeline's clean-up, with and without
horizontal-flip test-time augmentation. Folds resume: a finished fold is skipped, a killed one
resumes its training exactly (`ResumableFit`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from tfflannel.segmentation.readers import SegPair
from tfflannel.utils import sha256_of_file, write_image_grid, write_text_atomic

RECIPE_KEYS = ("model", "input_size", "epochs", "batch_size", "learning_rate", "weight_decay", "loss",
               "background_weight", "augment", "augment_strength", "dropout", "seed")
"""The `segmentation` settings that make a recipe, recorded in `cv.json` and the shipped descriptor."""

VARIANTS = {"raw": (False, False), "clean": (True, False), "raw+flip": (False, True), "clean+flip": (True, True)}
"""Scored variants: name -> (clean-up, flip TTA). `clean` is what every stage used before TTA existed."""


def deduplicate_pairs(pairs):
    """Drop pairs whose image bytes repeat an earlier pair's, and link patients across duplicates.

    Two sources may hold the same film (the bundled sample is drawn from `../shared/data/cxr-seg`),
    possibly under other patient ids: the first pair is kept, and every patient id seen on one film
    joins one group, so no patient can sit on both sides of a fold.

    Args:
        pairs: sequence of SegPair.

    Returns:
        (list of SegPair with `patient_id` set to its linked group, int number of duplicates dropped).
    """
    parent = {}

    def find(key):
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    kept, first_by_digest, dropped = [], {}, 0
    for pair in pairs:
        digest = hashlib.sha256(Path(pair.image).read_bytes()).hexdigest()
        patient = pair.patient_id or pair.name
        find(patient)
        if digest in first_by_digest:
            parent[find(patient)] = find(first_by_digest[digest].patient_id or first_by_digest[digest].name)
            dropped += 1
            continue
        first_by_digest[digest] = pair
        kept.append(pair)
    return [dataclasses.replace(pair, patient_id=find(pair.patient_id or pair.name)) for pair in kept], dropped


def patient_folds(pairs, folds=5, seed=0):
    """Assign each pair a fold in `0..folds-1` so that a patient's films share one fold.

    Groups are shuffled by a NumPy generator seeded with `seed`, then placed largest first into the
    fold holding the fewest films, so the split is balanced and the same on every machine and
    scikit-learn version.

    Args:
        pairs: sequence of SegPair (after `deduplicate_pairs`).
        folds: int >= 2. Defaults to `5`.
        seed: int. Defaults to `0`.

    Returns:
        list of int, one fold per pair.

    Raises:
        ValueError: fewer patients than folds.
    """
    groups = sorted({pair.patient_id for pair in pairs})
    if folds < 2 or len(groups) < folds:
        raise ValueError(f"--cv needs 2 <= folds <= patients; found {len(groups)} patients for {folds} folds")
    sizes = {group: sum(pair.patient_id == group for pair in pairs) for group in groups}
    shuffled = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    order = sorted(shuffled, key=lambda group: -sizes[group])    # stable: ties keep the shuffled order
    load, assigned = [0] * folds, {}
    for group in order:
        fold = int(np.argmin(load))
        assigned[group] = fold
        load[fold] += sizes[group]
    return [assigned[pair.patient_id] for pair in pairs]


def score_fold(segmenter, pairs, batch_size=8):
    """Per-image Jaccard and Dice of the held-out pairs for each of `VARIANTS`.

    The model runs once on each film and once on its mirror; the four variants are derived from
    those two outputs with the code every stage uses (`Segmenter.film_masks`, `flip_average`).

    Args:
        segmenter: Segmenter.
        pairs: sequence of SegPair.
        batch_size: int. Defaults to `8`.

    Returns:
        dict variant -> list of {image, mask, patient_id, jaccard, dice}.
    """
    from tfflannel.film_pipeline import flip_average
    from tfflannel.segmentation.metrics import dice_coefficient, jaccard_index
    from tfflannel.segmentation.readers import load_pair

    scores = {name: [] for name in VARIANTS}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        loaded = [load_pair(pair, "lung") for pair in chunk]
        films = [image for image, _ in loaded]
        plain, mirrored = segmenter.outputs(segmenter.inputs(films))
        averaged = flip_average(plain, mirrored)
        for name, (clean, flip) in VARIANTS.items():
            masks = segmenter.film_masks(averaged if flip else plain, films, clean)
            for pair, (_, truth), mask in zip(chunk, loaded, masks, strict=True):
                scores[name].append({"image": pair.image, "mask": pair.masks["lung"], "patient_id": pair.patient_id,
                                     "jaccard": jaccard_index(mask, truth), "dice": dice_coefficient(mask, truth)})
    return scores


def summarize(fold_scores):
    """Mean (sample std) over folds of each fold's mean JI and Dice, per variant, plus pooled means.

    Args:
        fold_scores: list (one per fold) of `score_fold` results.

    Returns:
        dict variant -> {jaccard_mean, jaccard_std, dice_mean, dice_std, per_fold_jaccard, per_fold_dice,
        pooled_jaccard, pooled_dice, images}.
    """
    summary = {}
    for name in VARIANTS:
        per_fold_ji = [float(np.mean([r["jaccard"] for r in scores[name]])) for scores in fold_scores]
        per_fold_dice = [float(np.mean([r["dice"] for r in scores[name]])) for scores in fold_scores]
        rows = [r for scores in fold_scores for r in scores[name]]
        summary[name] = {
            "jaccard_mean": float(np.mean(per_fold_ji)), "jaccard_std": float(np.std(per_fold_ji, ddof=1)),
            "dice_mean": float(np.mean(per_fold_dice)), "dice_std": float(np.std(per_fold_dice, ddof=1)),
            "per_fold_jaccard": per_fold_ji, "per_fold_dice": per_fold_dice,
            "pooled_jaccard": float(np.mean([r["jaccard"] for r in rows])),
            "pooled_dice": float(np.mean([r["dice"] for r in rows])), "images": len(rows),
        }
    return summary


def cross_validate(config, pairs, out_dir, folds=5, progress=True, echo=print):
    """Run (or resume) patient-grouped k-fold CV of `config.segmentation`'s recipe under `out_dir`.

    Writes `fold-K/` (a `train-seg` run + `scores.json`) per fold, then `cv.json` (summary, folds,
    worst images) and `cv_worst.png` (QC grid of the 8 lowest-JI films).

    Args:
        config: ExperimentConfig. `segmentation.validation_share` is set to 0 for every fold.
        pairs: sequence of SegPair, possibly from several sources (de-duplicated here).
        out_dir: str or Path.
        folds: int. Defaults to `5`.
        progress: bool. Defaults to `True`.
        echo: callable(str). Progress lines. Defaults to `print`.

    Returns:
        dict: the contents of `cv.json`.
    """
    from tfflannel.segmentation.inference import load_segmenter
    from tfflannel.segmentation.train import train_segmenter

    out_dir = Path(out_dir)
    pairs, dropped = deduplicate_pairs(pairs)
    assignment = patient_folds(pairs, folds, config.segmentation.seed)
    fold_config = dataclasses.replace(config, segmentation=dataclasses.replace(config.segmentation,
                                                                                validation_share=0.0))
    fold_scores = []
    for fold in range(folds):
        train = [pair for pair, f in zip(pairs, assignment, strict=True) if f != fold]
        held_out = [pair for pair, f in zip(pairs, assignment, strict=True) if f == fold]
        run = out_dir / f"fold-{fold + 1}"
        train_segmenter(fold_config, train, run, progress=progress, echo=echo)
        scores_path, model_sha = run / "scores.json", sha256_of_file(run / "model.keras")
        recorded = json.loads(scores_path.read_text()) if scores_path.is_file() else {}
        if recorded.get("model_sha256") != model_sha or recorded.get("held_out") != [p.image for p in held_out]:
            scores = score_fold(load_segmenter(run), held_out)
            recorded = {"model_sha256": model_sha, "held_out": [p.image for p in held_out], "scores": scores}
            write_text_atomic(scores_path, json.dumps(recorded, indent=2) + "\n")
        fold_scores.append(recorded["scores"])
        clean = np.mean([r["jaccard"] for r in recorded["scores"]["clean"]])
        echo(f"fold {fold + 1}/{folds}: {len(train)} training, {len(held_out)} held-out films, JI (clean) {clean:.4f}")
    summary = summarize(fold_scores)
    best = max(VARIANTS, key=lambda name: summary[name]["jaccard_mean"])
    worst = sorted((r for scores in fold_scores for r in scores[best]), key=lambda r: r["jaccard"])[:8]
    result = {
        "folds": folds, "pairs": len(pairs), "duplicates_dropped": dropped,
        "patients": len({pair.patient_id for pair in pairs}), "seed": config.segmentation.seed,
        "recipe": {k: getattr(config.segmentation, k) for k in RECIPE_KEYS},
        "summary": summary, "best_variant": best, "worst": worst,
        "fold_of": {pair.image: fold + 1 for pair, fold in zip(pairs, assignment, strict=True)},
    }
    previous = json.loads((out_dir / "cv.json").read_text()) if (out_dir / "cv.json").is_file() else {}
    if previous.get("worst") != json.loads(json.dumps(worst)) or not (out_dir / "cv_worst.png").is_file():
        write_worst_grid(worst, out_dir / "cv_worst.png", segmenters={
            fold + 1: out_dir / f"fold-{fold + 1}" for fold in range(folds)}, fold_of=result["fold_of"],
            flip_tta=VARIANTS[best][1], clean=VARIANTS[best][0])
    write_text_atomic(out_dir / "cv.json", json.dumps(result, indent=2) + "\n")
    return result


def write_worst_grid(worst, path, segmenters, fold_of, flip_tta, clean, thumb=256):
    """A QC grid of the worst films: ground truth outline green, the held-out fold's mask red, JI in the corner.

    Args:
        worst: list of {image, mask, jaccard, ...} rows.
        path: str or Path of the PNG to write.
        segmenters: dict fold -> run directory of the model that never saw that fold.
        fold_of: dict image path -> fold number.
        flip_tta: bool. As scored.
        clean: bool. As scored.
        thumb: int. Tile side in pixels. Defaults to `256`.
    """
    import cv2

    from tfflannel.segmentation.inference import load_segmenter
    from tfflannel.segmentation.readers import load_pair

    loaded, tiles = {}, []
    for row in worst:
        fold = fold_of[row["image"]]
        if fold not in loaded:
            loaded[fold] = dataclasses.replace(load_segmenter(segmenters[fold]), flip_tta=flip_tta)
        image, truth = load_pair(SegPair(row["image"], {"lung": row["mask"]}), "lung")
        mask = loaded[fold].predict([image], clean=clean)[0]
        tile = cv2.cvtColor(cv2.resize(image, (thumb, thumb), interpolation=cv2.INTER_AREA), cv2.COLOR_GRAY2BGR)
        for binary, colour in ((truth, (0, 200, 0)), (mask, (0, 0, 255))):
            small = cv2.resize(binary.astype(np.uint8), (thumb, thumb), interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(tile, contours, -1, colour, 2)
        cv2.putText(tile, f"JI {row['jaccard']:.3f}", (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 255), 2)
        tiles.append(tile)
    return write_image_grid(tiles, path, columns=4)


def format_cv_table(results):
    """Markdown table of several `cv.json` results: one row per recipe and scored variant.

    Args:
        results: list of (label, cv.json dict).

    Returns:
        str.
    """
    lines = ["| recipe | variant | JI mean (std) over folds | Dice mean (std) | pooled JI | images |",
             "|---|---|---|---|---|---|"]
    for label, result in results:
        for name in VARIANTS:
            s = result["summary"][name]
            lines.append(f"| {label} | {name} | {s['jaccard_mean']:.4f} ({s['jaccard_std']:.4f}) | "
                         f"{s['dice_mean']:.4f} ({s['dice_std']:.4f}) | {s['pooled_jaccard']:.4f} | {s['images']} |")
    return "\n".join(lines)


def compare_folds(reference, candidate, variant="clean+flip"):
    """Fold-by-fold Jaccard index of a candidate recipe against a reference, on the same patient folds.

    Args:
        reference: dict. `cv.json` of the reference (e.g. the shipped recipe).
        candidate: dict. `cv.json` of the candidate.
        variant: str. One of `VARIANTS`. Defaults to `"clean+flip"`.

    Returns:
        dict: `deltas` (candidate minus reference, per fold), `higher` (folds where the candidate is higher),
        `folds`, `every_fold` (higher on every fold).

    Raises:
        ValueError: if the two runs did not hold out the same films in each fold.
    """
    if reference["fold_of"] != candidate["fold_of"]:
        raise ValueError("the two cross-validations did not use the same folds (their `fold_of` differ): "
                         "their per-fold figures cannot be compared")
    deltas = [float(c - r) for r, c in zip(reference["summary"][variant]["per_fold_jaccard"],
                                           candidate["summary"][variant]["per_fold_jaccard"], strict=True)]
    higher = sum(delta > 0 for delta in deltas)
    return {"deltas": deltas, "higher": higher, "folds": len(deltas), "every_fold": higher == len(deltas)}
