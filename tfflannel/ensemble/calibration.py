"""An ensemble run's temperature: fitted by `train-ensemble` on validation films, read by everything that serves it.

`RUNDIR/calibration.json` is written here and read only through `run_temperature`:

    {"method": "temperature" | "none", "temperature": T | null, "fit_images": n, "fit_set": "...",
     "nll_before": .., "nll_after": .., "ece_before": .., "ece_after": .., "bounds": [low, high],
     "inputs": {"model_sha256": .., "member0.valid_sha256": .., ...}}

The temperature is fitted on validation predictions only, never a test film: with `ensemble.fit_on: valid` on the
patients held out of the weight fit (`ensemble.holdout_share`; with no hold-out, on all validation films, in
sample, and the record says so), with `fit_on: train` on all validation films. `inputs` ties the record to the
`model.keras` and member predictions it was fitted on: a record of another model is refused, never applied.
Base learners carry no temperature (see docs/evaluation.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfflannel.errors import InputError
from tfflannel.evaluation.calibration import (
    TEMPERATURE_BOUNDS,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
)
from tfflannel.run_info import file_sha256, load_run_info
from tfflannel.utils import write_text_atomic

CALIBRATION_FILE = "calibration.json"
CALIBRATION_METHODS = ("temperature", "none")


@dataclass(frozen=True)
class RunTemperature:
    """The temperature a run's probabilities are served and evaluated with.

    Args:
        temperature: float. T (1.0 when none is applied).
        fitted: bool. Whether T was fitted (False: T = 1 is applied explicitly, see `note`).
        note: str. Where T comes from, for the report.
    """

    temperature: float
    fitted: bool
    note: str


def calibration_inputs(run_dir, member_dirs):
    """What a temperature record is valid for: the ensemble's model.keras and its members' valid predictions."""
    inputs = {"model_sha256": file_sha256(Path(run_dir) / "model.keras")}
    for index, member in enumerate(member_dirs):
        inputs[f"member{index}.valid_sha256"] = file_sha256(Path(member) / "predictions" / "valid.csv")
    return inputs


def read_calibration(run_dir):
    """RUNDIR/calibration.json as a dict, or `None` if absent.

    Raises:
        InputError: the file is not a JSON object with a known `method`.
    """
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError as error:
        raise InputError(f"{path}: unreadable ({error}); rerun train-ensemble to fit the temperature again") from None
    if not isinstance(record, dict) or record.get("method") not in CALIBRATION_METHODS:
        raise InputError(f"{path}: expected an object with method one of {list(CALIBRATION_METHODS)}")
    return record


def calibration_is_current(run_dir, member_dirs, method):
    """Whether RUNDIR/calibration.json was made with `method` for the present model and member predictions."""
    try:
        record = read_calibration(run_dir)
    except InputError:
        return False
    return bool(record) and record["method"] == method and \
        record.get("inputs") == calibration_inputs(run_dir, member_dirs)


def calibrate_ensemble(run_dir, member_dirs, method, labels, probabilities, fit_set):
    """Fit the temperature on validation films and write RUNDIR/calibration.json (atomically).

    Args:
        run_dir: str or Path. The ensemble run (its `model.keras` is final).
        member_dirs: list of str or Path. Its base-learner runs, in input order.
        method: str. `temperature` (fit T) or `none` (record that none is applied).
        labels: array-like of shape `(N,)`, int. Labels of the calibration films (validation films only).
        probabilities: array-like of shape `(N, C)`, float. The ensemble's uncalibrated probabilities for them.
        fit_set: str. Which films these are, in words (recorded).

    Returns:
        dict. The record written.

    Raises:
        InputError: an unknown method.
    """
    if method not in CALIBRATION_METHODS:
        raise InputError(f"ensemble.calibration must be one of {list(CALIBRATION_METHODS)}. Received: {method!r}.")
    labels, probabilities = np.asarray(labels, int), np.asarray(probabilities, float)
    record = {"method": method, "temperature": None, "fit_images": int(len(labels)), "fit_set": fit_set}
    if method == "temperature":
        if not len(labels):
            raise InputError(f"{run_dir}: no validation films to fit the temperature on; "
                             "set ensemble.calibration=none")
        temperature = fit_temperature(labels, probabilities)
        calibrated = apply_temperature(probabilities, temperature)
        record.update({"temperature": temperature, "bounds": list(TEMPERATURE_BOUNDS),
                       "at_bound": bool(np.isclose(temperature, TEMPERATURE_BOUNDS, rtol=1e-3).any()),
                       "nll_before": negative_log_likelihood(labels, probabilities),
                       "nll_after": negative_log_likelihood(labels, calibrated),
                       "ece_before": expected_calibration_error(labels, probabilities),
                       "ece_after": expected_calibration_error(labels, calibrated)})
    record["inputs"] = calibration_inputs(run_dir, member_dirs)
    write_text_atomic(Path(run_dir) / CALIBRATION_FILE, json.dumps(record, indent=2) + "\n")
    return record


def run_temperature(run_dir):
    """The temperature `evaluate`, `predict`, `export` and the SavedModel apply to a run's probabilities.

    Base learners: T = 1 (no temperature). Ensembles: the fitted T of calibration.json; T = 1 with a note when
    `ensemble.calibration` was `none`, or when the run predates temperature scaling (no calibration.json).

    Args:
        run_dir: str or Path. A base-learner or ensemble run.

    Returns:
        RunTemperature.

    Raises:
        InputError: calibration.json was fitted for another model.keras (the run was trained again since).
    """
    info = load_run_info(run_dir)
    if info.kind != "ensemble":
        return RunTemperature(1.0, False, "base learner: no temperature (uncalibrated probabilities)")
    record = read_calibration(run_dir)
    if record is None:
        return RunTemperature(1.0, False, "no calibration.json (an ensemble made before temperature scaling): "
                                          "T = 1 applied; rerun train-ensemble to fit a temperature")
    model_sha = file_sha256(Path(run_dir) / "model.keras")
    if record.get("inputs", {}).get("model_sha256") != model_sha:
        raise InputError(f"{Path(run_dir) / CALIBRATION_FILE}: fitted for another model.keras than the one in "
                         f"{run_dir}; rerun train-ensemble there to fit the temperature again")
    if record["method"] == "none":
        return RunTemperature(1.0, False, "ensemble.calibration: none (T = 1, uncalibrated probabilities)")
    temperature = float(record["temperature"])
    return RunTemperature(temperature, True, f"temperature T = {temperature:.3f} fitted on {record['fit_images']} "
                                             f"validation films ({record['fit_set']})")
