"""Served-vs-evaluated checks: refuse to serve runs other than as they were trained and evaluated.

Three independent checks, each returning the problems it found (one line each, naming the run, both values and the
option that fixes it); `check_runs_match` runs those that apply and raises one InputError listing them all:

- `segmenter_and_view_problems`: a patch run's cache key (segmenter fingerprint, view size, QC bounds,
  patches.input) against the segmenter and view to serve;
- `scored_k_seed_problems`: a single learner's K and patch seed against those of its own `predict-base` scores;
- `ensemble_k_seed_problems`: K and the patch seed against those of the member predictions an ensemble was fit on.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from tfflannel.errors import InputError
from tfflannel.film_pipeline import CONFIDENCE_QC_OFF, ViewSettings

# Which option changes each cache-key entry, for the "how to fix" half of a mismatch message.
_KEY_FIX = {"segmenter": "--seg (the segmenter `segment` used for that work directory)",
            "segmenter_input": "--seg (the segmenter `segment` used for that work directory)",
            "segmenter_classes": "--seg (the segmenter `segment` used for that work directory)",
            "size": "--set segmentation.cache_size={}", "min_lung_fraction": "--set segmentation.min_lung_fraction={}",
            "max_lung_fraction": "--set segmentation.max_lung_fraction={}", "input": "--set patches.input={}",
            "min_mask_confidence": "--set segmentation.min_mask_confidence={}",
            "max_flip_disagreement": "--set segmentation.max_flip_disagreement={}"}


def recorded_cache_key(run_dir, info):
    """The cache key a patch run was trained and evaluated on, and where it was read.

    The key recorded in run.yaml at training time comes first (it travels with a copied run folder); runs
    trained before it was recorded fall back to their work directory's `cache/cache.json`.

    Args:
        run_dir: str or Path. A patch run directory.
        info: RunInfo. Its run.yaml.

    Returns:
        tuple: `(key, source)`: a dict (or `None` if neither is available) and a description of its origin.
    """
    from tfflannel.segmentation.cache_record import cache_record_path
    from tfflannel.segmentation.cache_record import recorded_cache_key as workdir_cache_key

    if info.cache_key:
        return info.cache_key, f"{Path(run_dir) / 'run.yaml'}"
    workdir = info.workdir_path(run_dir)
    return workdir_cache_key(workdir), str(cache_record_path(workdir))


def scored_with(run_dir):
    """The identity (K, seed, ...) of a run's current `predict-base` scores, or `{}` when it has none.

    Only scores of the run's present model that finished at least one partition count: a predict-base run
    that was killed before writing anything, or scores of a model trained again since, describe nothing
    that is served. An unreadable `provenance.json` counts as none (with a warning).

    Args:
        run_dir: str or Path. A base-learner run.

    Returns:
        dict. The scores' identity, or `{}`.
    """
    from tfflannel.provenance import read_provenance
    from tfflannel.utils import file_sha256

    try:
        recorded = read_provenance(run_dir)
    except InputError as error:
        warnings.warn(f"{error}; K and seed not checked", stacklevel=3)
        return {}
    if recorded is None or recorded.identity is None or not recorded.done:
        return {}
    model = Path(run_dir) / "model.keras"
    if not model.is_file() or recorded.identity.model_sha256 != file_sha256(model):
        return {}
    return recorded.identity.as_dict()


def recorded_inference(run_dirs, ensemble_dir=None):
    """K and the patch seed the served runs were evaluated with, where they record them.

    The records `check_runs_match` compares against: with an ensemble, the member predictions it was fit on
    (its `resume/state.json` fingerprint, else K from its run.yaml); without one, each patch run's current
    `predict-base` scores (`predictions/provenance.json`). Global runs draw no patches and record neither.

    Args:
        run_dirs: list of str or Path. The base-learner runs.
        ensemble_dir: str or Path or None. The ensemble run. Defaults to `None`.

    Returns:
        dict: `k` and `seed` (int) where the records hold one value (absent where none or several are recorded),
        and `source` (str): where they were read.
    """
    from tfflannel.resume_state import member_value, read_fit_state
    from tfflannel.run_info import load_run_info

    infos = [load_run_info(r) for r in run_dirs]
    found = {"k": set(), "seed": set()}
    if ensemble_dir:
        state = read_fit_state(ensemble_dir)
        for index, info in enumerate(infos):
            if info.kind == "patch":
                found["k"].add(member_value(state, index, "k", load_run_info(ensemble_dir).k))
                found["seed"].add(member_value(state, index, "seed"))
        source = f"{ensemble_dir} (the member predictions it was fit on)"
    else:
        for run_dir, info in zip(run_dirs, infos, strict=True):
            scored = scored_with(run_dir) if info.kind == "patch" else {}
            for key in found:
                found[key].add(scored.get(key))
        source = f"{', '.join(map(str, run_dirs))} (predictions/provenance.json of predict-base)"
    values = {key: {v for v in seen if v is not None} for key, seen in found.items()}
    return {**{key: int(next(iter(v))) for key, v in values.items() if len(v) == 1}, "source": source}


def segmenter_and_view_problems(segmenter, run_dirs, infos, view=None):
    """Each patch run's recorded cache key against the segmenter and view to serve (global runs: not checked).

    A run whose key is not recorded anywhere (an older run copied without its work directory) is served with
    a warning.

    Args:
        segmenter: `segmentation.inference.Segmenter`.
        run_dirs: list of str or Path. The base-learner runs.
        infos: list of RunInfo. Their run.yaml, in the same order.
        view: ViewSettings. The view to serve. Defaults to `ViewSettings()`.

    Returns:
        list of str. One line per differing key entry.
    """
    from tfflannel.segmentation.cache import CacheSettings

    expected = json.loads(json.dumps(CacheSettings(view or ViewSettings()).key(segmenter)))
    problems = []
    for run_dir, info in zip(run_dirs, infos, strict=True):
        if info.kind != "patch":
            continue
        recorded, source = recorded_cache_key(run_dir, info)
        if recorded is None:
            warnings.warn(f"{run_dir}: cannot check the segmenter and view it was trained with (no cache_key in "
                          f"run.yaml, no {source}); serving it unchecked", stacklevel=3)
            continue
        for name in sorted(set(recorded) | set(expected)):
            was, now = recorded.get(name), expected.get(name)
            if was != now:
                fix = _KEY_FIX.get(name, "rerun `segment` and retrain the run").format(
                    CONFIDENCE_QC_OFF[name] if was is None and name in CONFIDENCE_QC_OFF else was)
                problems.append(f"{run_dir}: {name} was {was!r} (per {source}), is {now!r} here; fix: {fix}")
    return problems


def scored_k_seed_problems(run_dirs, infos, k, seed):
    """Each patch run's K and patch seed against those of its own current `predict-base` scores, where it has any.

    Args:
        run_dirs: list of str or Path. The base-learner runs.
        infos: list of RunInfo. Their run.yaml, in the same order.
        k: int. Patches per image to serve.
        seed: int. Patch seed to serve.

    Returns:
        list of str. One line per differing value.
    """
    problems = []
    for run_dir, info in zip(run_dirs, infos, strict=True):
        evaluated = scored_with(run_dir) if info.kind == "patch" else {}
        if not evaluated:
            continue
        for name, key, served in (("K", "k", k), ("patch seed", "seed", seed)):
            was, option = evaluated[key], f"inference.{key}"
            if was is not None and int(was) != int(served):
                problems.append(f"{run_dir}: its predict-base scores (predictions/provenance.json) used {name} "
                                f"{was}, served with {name} {served}; fix: --set {option}={was}")
    return problems


def ensemble_k_seed_problems(ensemble_dir, run_dirs, infos, k, seed):
    """K and the patch seed against those of the member predictions the ensemble was fit on.

    Read from the ensemble's resume fingerprint (`member{i}.k`, `member{i}.seed`), else K from its run.yaml.

    Args:
        ensemble_dir: str or Path. The train-ensemble run.
        run_dirs: list of str or Path. Its base-learner runs, in its order.
        infos: list of RunInfo. Their run.yaml, in the same order.
        k: int. Patches per image to serve.
        seed: int. Patch seed to serve.

    Returns:
        list of str. One line per differing value.
    """
    from tfflannel.resume_state import member_value, read_fit_state
    from tfflannel.run_info import load_run_info

    state = read_fit_state(ensemble_dir)
    problems = []
    for index, (run_dir, info) in enumerate(zip(run_dirs, infos, strict=True)):
        if info.kind != "patch":
            continue
        fit_k = member_value(state, index, "k", load_run_info(ensemble_dir).k)
        fit_seed = member_value(state, index, "seed")
        if fit_k is not None and int(fit_k) != int(k):
            problems.append(f"{ensemble_dir}: fit on {run_dir}'s predictions with K={fit_k}, served with "
                            f"K={k}; fix: --set inference.k={fit_k}")
        if fit_seed is not None and int(fit_seed) != int(seed):
            problems.append(f"{ensemble_dir}: fit on {run_dir}'s predictions with patch seed {fit_seed}, served "
                            f"with seed {seed}; fix: --set inference.seed={fit_seed}")
    return problems


def check_runs_match(segmenter, run_dirs, infos, ensemble_dir=None, k=100, seed=0, view=None, scores=True):
    """Refuse to serve runs with a segmenter, view, K or seed other than those they were evaluated with.

    Always `segmenter_and_view_problems`; with `scores`, K and the seed too: against the ensemble's member
    predictions (`ensemble_k_seed_problems`) when there is an ensemble, else against each run's own
    `predict-base` scores (`scored_k_seed_problems`).

    Args:
        segmenter: `segmentation.inference.Segmenter`.
        run_dirs: list of str or Path. The base-learner runs.
        infos: list of RunInfo. Their run.yaml, in the same order.
        ensemble_dir: str or Path or None. The ensemble run. Defaults to `None`.
        k: int. Patches per image to serve. Defaults to `100`.
        seed: int. Patch seed to serve. Defaults to `0`.
        view: ViewSettings. The view to serve. Defaults to `ViewSettings()`.
        scores: bool. Also check K and the seed (serving); `explain`, which draws patches but serves no
            scores, passes `False`. Defaults to `True`.

    Raises:
        InputError: a mismatch, naming the run, both values and the option that fixes it.
    """
    problems = segmenter_and_view_problems(segmenter, run_dirs, infos, view)
    if scores and ensemble_dir:
        problems += ensemble_k_seed_problems(ensemble_dir, run_dirs, infos, k, seed)
    elif scores:
        problems += scored_k_seed_problems(run_dirs, infos, k, seed)
    if problems:
        raise InputError("what would be served differs from what was evaluated:\n  " + "\n  ".join(problems))
