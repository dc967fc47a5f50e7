"""Build an InferencePipeline from run directories, checked against what the runs were evaluated with."""

from __future__ import annotations

from pathlib import Path

import keras

from tfflannel.errors import InputError
from tfflannel.film_pipeline import ViewSettings
from tfflannel.serving.checks import check_runs_match
from tfflannel.serving.pipeline import InferencePipeline, load_learner_runs


def build_pipeline(segmenter, run_dirs, ensemble_dir=None, k=100, seed=0, view=None, limits=None):
    """An InferencePipeline from run directories, checked against what the runs were evaluated with.

    An ensemble's own learner order is enforced, its recorded temperature applied (`served_temperature`), and
    `check_runs_match` refuses a segmenter, view, K or seed
    other than those the runs were trained and evaluated with.

    Args:
        segmenter: `segmentation.inference.Segmenter`.
        run_dirs: list of str or Path. Base-learner runs (the ensemble's order).
        ensemble_dir: str or Path or None. A train-ensemble run. Defaults to `None`.
        k: int. Patches per image. Defaults to `100`.
        seed: int. Patch seed. Defaults to `0`.
        view: ViewSettings. Defaults to `ViewSettings()`.
        limits: dict or None. Image size limits for `serving_default` (see `InferencePipeline`). Defaults to `None`.

    Returns:
        InferencePipeline.

    Raises:
        InputError: runs not in the ensemble's order, an ensemble run among the learners, or a mismatch.
    """
    import tfflannel.models.ensemble  # noqa: F401  (registers the ensemble layers for loading)
    from tfflannel.run_info import load_run_info

    infos = [load_run_info(r) for r in run_dirs]
    for run_dir, info in zip(run_dirs, infos, strict=True):
        if info.kind == "ensemble":
            raise InputError(f"{run_dir} is a train-ensemble run; pass it as --ensemble and its learners as --runs")
    ensemble, score, temperature = None, "prob", None
    if ensemble_dir:
        info = load_run_info(ensemble_dir)
        expected = [str(p.resolve()) for p in info.run_paths(ensemble_dir)]
        given = [str(Path(r).resolve()) for r in run_dirs]
        if given != expected:
            raise InputError(f"{ensemble_dir} was trained on runs {expected} in this order; received {given}")
    check_runs_match(segmenter, run_dirs, infos, ensemble_dir, k, seed, view)
    if ensemble_dir:
        ensemble = keras.saving.load_model(Path(ensemble_dir) / "model.keras", compile=False)
        score = info.score or "prob"
        temperature = served_temperature(ensemble_dir)
    return InferencePipeline(segmenter, load_learner_runs(run_dirs), ensemble, k=k, seed=seed, score=score, view=view,
                             temperature=temperature, limits=limits)


def served_temperature(ensemble_dir):
    """The fitted temperature an ensemble is served with, or `None` (T = 1, with a warning for an older run).

    Raises:
        InputError: the run's calibration.json was fitted for another model.keras.
    """
    import warnings

    from tfflannel.ensemble.calibration import CALIBRATION_FILE, run_temperature

    temperature = run_temperature(ensemble_dir)
    if not temperature.fitted and not (Path(ensemble_dir) / CALIBRATION_FILE).is_file():
        warnings.warn(f"{ensemble_dir}: {temperature.note}", stacklevel=3)
    return temperature.temperature if temperature.fitted else None


def pipeline_from_config(config, segmenter, run_dirs, ensemble_dir=None):
    """`build_pipeline` with K, seed, view (QC, size, patches.input) and image limits (`data.*`) from the config."""
    limits = {"max_megapixels": config.data.max_megapixels, "min_side": config.data.min_side}
    return build_pipeline(segmenter, run_dirs, ensemble_dir, k=config.inference.k, seed=config.inference.seed,
                          view=ViewSettings.from_config(config), limits=limits)


def take_recorded_inference(config, run_dirs, ensemble_dir=None, explicit=()):
    """Serve with the K and patch seed the runs were evaluated with, unless the user set them.

    `config.inference.k` / `.seed` become the runs' recorded values (`recorded_inference`) where `explicit`
    does not name `inference.k` / `inference.seed`; an explicit value is kept, and `check_runs_match` refuses
    it if it differs from the records.

    Args:
        config: ExperimentConfig. Changed in place.
        run_dirs: list of str or Path. The base-learner runs.
        ensemble_dir: str or Path or None. The ensemble run. Defaults to `None`.
        explicit: iterable of str. Dotted keys the command line or a given config set (`config.explicit_keys`),
            plus `inference.k` when a command's own `--k` was given. Defaults to `()`.

    Returns:
        str or None. One line saying what was taken from where, or None when nothing was.
    """
    from tfflannel.serving.checks import recorded_inference

    recorded = recorded_inference(run_dirs, ensemble_dir)
    taken = []
    for key, name in (("k", "K"), ("seed", "patch seed")):
        if key in recorded and f"inference.{key}" not in set(explicit):
            setattr(config.inference, key, recorded[key])
            taken.append(f"{name} {recorded[key]}")
    if not taken:
        return None
    return f"{' and '.join(taken)} taken from {recorded['source']}"
