"""The one trainer (`tfflannel/training.py`): the order it runs a task's hooks in, and what a rerun does.

The four real tasks are proven by the kill -9 tests (tests/test_resume*.py); this checks the contract they share
on a task small enough to reason about: a Dense layer on seeded data.
"""

import json

import keras
import numpy as np
import pytest

from tests.seeded_training import KillAtEpoch, SeededBatches
from tfflannel.config import load_config
from tfflannel.resume import StaleRunError
from tfflannel.training import TrainingTask, train


def _batch(rng):
    x = rng.normal(size=(8, 3)).astype("float32")
    return x, x @ np.array([[1.0], [-2.0], [0.5]], "float32")


class _LineTask(TrainingTask):
    section = "ensemble"          # any section with epochs, seed and batch_size

    def __init__(self, stop_after=None):
        self.calls, self.stop_after, self.tag = [], stop_after, "a"

    def fingerprint(self, config):
        self.calls.append("fingerprint")
        return {"tag": self.tag}

    def completed(self, fit, out_dir):
        self.calls.append("completed")
        path = out_dir / "result.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def prepare(self, config, out_dir):
        self.calls.append("prepare")

    def training_data(self, config, first_epoch, batch_size, drop_remainder):
        self.calls.append(f"training_data from {first_epoch}")
        return SeededBatches(_batch, 2, first_epoch), {}

    def build_model(self, config):
        self.calls.append("build_model")
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        return model

    def callbacks(self, config, model, data, out_dir):
        self.calls.append("callbacks")
        return [KillAtEpoch(self.stop_after)] if self.stop_after else []

    def finalise(self, config, fit, out_dir):
        self.calls.append("finalise")
        result = {"loss": fit.history["loss"]}
        (out_dir / "result.json").write_text(json.dumps(result))
        return result


def _config():
    return load_config(None, ["ensemble.epochs=4", "ensemble.batch_size=8"])


def test_train_runs_the_hooks_in_order_and_a_killed_run_ends_as_an_uninterrupted_one(tmp_path):
    whole = _LineTask()
    expected = train(_config(), whole, tmp_path / "whole", progress=False)
    assert whole.calls == ["fingerprint", "prepare", "training_data from 0", "build_model", "callbacks", "finalise"]
    assert len(expected["loss"]) == 4 and expected["loss"][-1] < expected["loss"][0]

    killed = _LineTask(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        train(_config(), killed, tmp_path / "cut", progress=False)
    resumed = _LineTask()
    result = train(_config(), resumed, tmp_path / "cut", progress=False)
    assert resumed.calls[:3] == ["fingerprint", "prepare", "training_data from 2"]
    np.testing.assert_allclose(result["loss"], expected["loss"], rtol=1e-6)


def test_a_complete_run_is_not_trained_again_and_missing_outputs_are_finalised_without_a_fit(tmp_path):
    train(_config(), _LineTask(), tmp_path / "run", progress=False)
    notes = []
    again = _LineTask()
    result = train(_config(), again, tmp_path / "run", progress=False, echo=notes.append)
    assert "build_model" not in again.calls and "prepare" not in again.calls and "finalise" not in again.calls
    assert len(result["loss"]) == 4 and len(notes) == 1 and "is complete" in notes[0]

    (tmp_path / "run" / "result.json").unlink()          # complete, but its outputs are gone: finalise anew
    redo = _LineTask()
    assert train(_config(), redo, tmp_path / "run", progress=False)["loss"] == result["loss"]
    assert "build_model" not in redo.calls and redo.calls[-2:] == ["prepare", "finalise"]


def test_a_changed_fingerprint_or_config_section_makes_the_run_stale(tmp_path):
    train(_config(), _LineTask(), tmp_path / "run", progress=False)
    changed = _LineTask()
    changed.tag = "b"
    with pytest.raises(StaleRunError, match=r"tag: 'a' -> 'b'"):
        train(_config(), changed, tmp_path / "run", progress=False)
    with pytest.raises(StaleRunError, match=r"ensemble.learning_rate"):
        train(load_config(None, ["ensemble.epochs=4", "ensemble.batch_size=8", "ensemble.learning_rate=0.5"]),
              _LineTask(), tmp_path / "run", progress=False)
