"""`audit`: does a learner look at the lungs? Counterfactual inputs, attention, source probe, strata, verdict.

`audit_runs` is the one function the CLI, `reproduce` and `demo` call. On the test partition of the work
directory, for each base-learner run (and an ensemble of them):

1. the films are segmented and viewed with the segmenter and view settings the run was trained with
   (`segmentation.view_maker`: the film pipeline), and scored on `normal`, `lungs_only` and
   `lungs_removed` inputs (`audit.inputs`);
2. `lung_attention`, the source / view / age-group probes on the penultimate features (`audit.probe`);
3. metrics per condition and per stratum, and the per-class shortcut rule (`audit.verdict`).

Writes `OUT/audit.json` (schema in docs/evaluation.md), `OUT/audit.md` and `OUT/plots/audit_*.png`,
each atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfflannel import CLASS_NAMES
from tfflannel.audit.inputs import score_films
from tfflannel.audit.probe import attribute_probe
from tfflannel.audit.verdict import condition_metrics, shortcut_classes, single_source_classes, strata_rows
from tfflannel.errors import InputError
from tfflannel.film_pipeline import CONDITIONS

PROBED = ("source", "view", "age_group")
"""Manifest columns the probes try to read off the features; `source_probe` is the one audit.json's schema names."""


def _run_view(run_dir):
    """The ViewSettings of a run's own config.yaml (the view it was trained on); defaults if it has none."""
    from tfflannel.film_pipeline import ViewSettings
    from tfflannel.run_info import load_run_config

    return ViewSettings.from_config(load_run_config(run_dir)) if (Path(run_dir) / "config.yaml").is_file() \
        else ViewSettings()


def _load_learners(run_dirs, segmenter, k, seed):
    """[(run_dir, model, info, view)]; patch runs checked against the segmenter and view they were trained on."""
    from tfflannel.learners.infer import read_run
    from tfflannel.serving.checks import check_runs_match

    learners = []
    for run_dir in run_dirs:
        model, info = read_run(run_dir)
        view = _run_view(run_dir)
        check_runs_match(segmenter, [run_dir], [info], k=k, seed=seed, view=view, scores=False)
        learners.append((Path(run_dir), model, info, view))
    return learners


def _cached_views(workdir, segmenter, view):
    """{image_id: (image PNG, mask PNG)} of the test films from WORKDIR/cache if made with this segmenter and view.

    `None` when the cache is missing or was built otherwise (`CacheSettings.key`); it holds what `view_maker`
    would make again.
    """
    from tfflannel.patches.pipeline import read_records
    from tfflannel.segmentation.cache import CacheSettings

    cache_json = Path(workdir) / "cache" / "cache.json"
    if not cache_json.is_file():
        return None
    expected = json.loads(json.dumps(CacheSettings(view).key(segmenter)))
    if json.loads(cache_json.read_text()).get("key") != expected:
        return None
    return {record["image_id"].numpy().decode(): (record["image_png"], record["mask_png"])
            for record in read_records(workdir, "test", 1)}


def _decode_view(pngs):
    import tensorflow as tf

    mask = tf.io.decode_png(pngs[1], channels=1)[..., 0].numpy()        # stored as 0 / 255
    return {"image": tf.io.decode_png(pngs[0], channels=1)[..., 0].numpy(), "mask": (mask > 0).astype("uint8")}


def _views(films, rows, view, segmenter, cached, batch):
    """The films' masked views: from the cache where it holds them, else made by the film pipeline (`view_maker`)."""
    from tfflannel.segmentation.view_maker import view_maker

    if cached is not None and all(row["image_id"] in cached for row in rows):
        return [_decode_view(cached[row["image_id"]]) for row in rows]
    return view_maker(segmenter, view).views(films, batch_size=min(batch, 8))


def _score_all(learners, films_rows, workdir, segmenter, k, seed, audit, progress):
    """Per learner: `score_films` over every film, in chunks of `audit.films_per_batch` (films viewed once per view)."""
    from tqdm.auto import tqdm

    from tfflannel.data.io import read_image

    parts = [[] for _ in learners]
    batch = int(audit.films_per_batch)
    caches = {view: _cached_views(workdir, segmenter, view) for view in {learner[3] for learner in learners}}
    bar = tqdm(total=len(films_rows), desc="audit", unit="img", disable=not progress)
    for start in range(0, len(films_rows), batch):
        chunk = films_rows[start:start + batch]
        films = [read_image(row["path"])[0] for row in chunk]
        views = {}
        for index, (_, model, info, view) in enumerate(learners):
            if view not in views:
                views[view] = _views(films, chunk, view, segmenter, caches[view], batch)
            parts[index].append(score_films(model, info, films, views[view], k, seed, view,
                                            attention=audit.gradcam or info.kind != "global"))
        bar.update(len(films))
    bar.close()
    merged = []
    for chunks in parts:
        result = {c: {name: np.concatenate([chunk[c][name] for chunk in chunks]) for name in chunks[0][c]}
                  for c in CONDITIONS}
        result["attention"] = np.concatenate([chunk["attention"] for chunk in chunks])
        merged.append(result)
    return merged


def _ensemble_conditions(ensemble_dir, learners, scored, labels):
    """The ensemble's metrics per condition, fed its members' scores on that condition; `None` if it cannot be fed."""
    import keras

    import tfflannel.models.ensemble  # noqa: F401  (registers the ensemble layers)
    from tfflannel.run_info import load_run_info

    info = load_run_info(ensemble_dir)
    if info.kind != "ensemble":
        raise InputError(f"--ensemble {ensemble_dir}: a {info.kind} run, not a train-ensemble run")
    given = {str(run_dir.resolve()): index for index, (run_dir, *_rest) in enumerate(learners)}
    members = [str(p.resolve()) for p in info.run_paths(ensemble_dir)]
    missing = [m for m in members if m not in given]
    if missing:
        raise InputError(f"--ensemble {ensemble_dir} was trained on {missing}, not among --runs; pass all its learners")
    model = keras.saving.load_model(Path(ensemble_dir) / "model.keras", compile=False)
    column = "votes" if info.score == "vote" else "probs"
    conditions, normal = {}, None
    for condition in CONDITIONS:
        flat = np.concatenate([scored[given[m]][condition][column] for m in members], axis=1)
        probabilities = np.asarray(model.predict(flat, verbose=0), float)
        conditions[condition] = condition_metrics(labels, probabilities)
        normal = probabilities if condition == "normal" else normal
    return {"run": info.display_name, "dir": str(ensemble_dir), "score": column, "conditions": conditions}, normal


def _learner_audit(run_dir, info, scores, labels, groups, rows, audit):
    """One learner's audit.json entry: metrics per condition, shortcut flag, attribute probes, lung attention.

    Args:
        run_dir: Path. The run.
        info: RunInfo. The run's record.
        scores: dict. Its scores per condition (`probs`, and `features` for `normal`) and `attention`.
        labels: (N,) int array. The test films' classes.
        groups: list of str. Their patient groups (the probes' folds and bootstrap).
        rows: list of dict. Their manifest rows (the probed attributes).
        audit: AuditConfig.
    """
    conditions = {c: condition_metrics(labels, scores[c]["probs"]) for c in CONDITIONS}
    flagged = shortcut_classes(labels, conditions, audit.kept_share, audit.min_gain)
    probes, reasons = {}, {}
    for column in PROBED:
        probes[column], reasons[column] = attribute_probe(
            scores["normal"]["features"], [r.get(column, "") for r in rows], groups, audit.probe_folds,
            audit.seed, audit.bootstrap_resamples)
    attention = scores["attention"]
    return {
        "run": info.display_name, "dir": str(run_dir), "mode": "patch" if info.kind == "patch" else "global",
        "conditions": conditions,
        "lung_attention": float(np.nanmean(attention)) if np.isfinite(attention).any() else None,
        "source_probe": probes["source"], "view_probe": probes["view"], "age_group_probe": probes["age_group"],
        "probe_notes": {column: reason for column, reason in reasons.items() if reason},
        "shortcut": bool(flagged), "shortcut_classes": flagged}


def audit_runs(run_dirs, workdir, out_dir, config, ensemble_dir=None, segmenter=None, progress=True):
    """Audit base-learner runs (and an ensemble of them) on the test partition; write audit.json, audit.md, plots.

    Args:
        run_dirs: list of str or Path. train-patch / train-global runs.
        workdir: str or Path. The work directory (manifest.csv) whose test partition is audited.
        out_dir: str or Path. Where audit.json, audit.md and plots/ go (created if needed).
        config: ExperimentConfig. `audit.*` (thresholds, probe) and `inference.k` / `inference.seed` (patches).
        ensemble_dir: str or Path or None. A train-ensemble run over (some of) `run_dirs`. Defaults to `None`.
        segmenter: `segmentation.inference.Segmenter`. Defaults to the shipped one; a patch run's recorded
            segmenter and view must match (`serving.checks.check_runs_match`).
        progress: bool. Progress bar. Defaults to `True`.

    Returns:
        dict. The audit.json content.

    Raises:
        InputError: no runs, an ensemble among the runs, a mismatching segmenter or view, an empty test partition.
        FileNotFoundError: a run or the manifest is missing.
    """
    from tfflannel.audit.report import finite, write_audit
    from tfflannel.data.manifest import load_manifest, partition_rows
    from tfflannel.segmentation.inference import load_segmenter

    if not run_dirs:
        raise InputError("audit: --runs names no run")
    audit, k, seed = config.audit, int(config.inference.k), int(config.inference.seed)
    segmenter = segmenter or load_segmenter()
    rows = partition_rows(load_manifest(workdir), "test", 1)
    if not rows:
        raise InputError(f"{Path(workdir) / 'manifest.csv'}: the test partition is empty; nothing to audit")
    learners = _load_learners([Path(r) for r in run_dirs], segmenter, k, seed)
    labels = np.array([CLASS_NAMES.index(r["label"]) for r in rows])
    groups = [r["group_id"] for r in rows]
    scored = _score_all(learners, rows, workdir, segmenter, k, seed, audit, progress)
    result = {"partition": "test", "learners": [], "ensemble": None, "strata": [],
              "rule": {"kept_share": audit.kept_share, "min_gain": audit.min_gain}, "k": k, "seed": seed,
              "single_source_classes": single_source_classes(rows), "n": int(len(rows))}
    for (run_dir, _, info, _), scores in zip(learners, scored, strict=True):
        result["learners"].append(_learner_audit(run_dir, info, scores, labels, groups, rows, audit))
        result["strata"] += strata_rows(info.display_name, labels, scores["normal"]["probs"], rows)
    if ensemble_dir:
        result["ensemble"], normal = _ensemble_conditions(Path(ensemble_dir), learners, scored, labels)
        result["strata"] += strata_rows(result["ensemble"]["run"], labels, normal, rows)
    result = json.loads(json.dumps(finite(result)))
    write_audit(result, out_dir)
    return result
