"""Fault tests: kill -9 during train-patch, predict-base and train-ensemble, rerun, and compare with an
uninterrupted run (bit-identical history, best checkpoint and predictions).

Each kill is triggered by an event, a line the command writes (a seeded choice among them), never by a timer:
the same kill point is reached on a fast or a slow host."""

import csv
import os
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PATCH = ["--backbone", "mobilenet_v2", "--fold", "1", "--epochs", "2", "--batch-size", "16",
         "--set", "patched.patch_size=32", "--set", "patched.val_patches=2", "--set", "patched.patches_per_image=4",
         "--set", "patched.learning_rate=0.001", "--set", "patched.precise_bn_batches=2"]
PREDICT = ["--k", "3", "--set", "inference.images_per_batch=2"]


def _cli(*args, kill_after=None):
    """Run `python -m tfflannel.cli ARGS`; with `kill_after`, SIGKILL it as soon as that text appears in its output."""
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen([sys.executable, "-m", "tfflannel.cli", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env=env)
    output, killed = [], threading.Event()

    def watch():
        seen = ""
        while chunk := os.read(process.stdout.fileno(), 4096):
            seen += chunk.decode(errors="replace")
            output.append(chunk.decode(errors="replace"))
            if kill_after and not killed.is_set() and kill_after in seen:
                killed.set()
                process.send_signal(signal.SIGKILL)

    reader = threading.Thread(target=watch)
    reader.start()
    code = process.wait(timeout=600)
    reader.join()
    return code, "".join(output)


def _kill_then_finish(args, marker):
    code, output = _cli(*args, kill_after=marker)
    assert code == -signal.SIGKILL, f"not killed (exit {code}); the kill window missed the run:\n{output[-2000:]}"
    code, output = _cli(*args)
    assert code == 0, output[-3000:]
    return output


def _in_process(*args):
    """The same command in this process (the uninterrupted reference; saves a TensorFlow start-up)."""
    from click.testing import CliRunner

    from tfflannel.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output[-3000:]
    return result.output


def _assert_same_weights(a, b):
    """Bit-identical weights, and no optimizer state in either `model.keras`."""
    import keras

    import tfflannel.models.classifier  # noqa: F401  (registers the custom layers)
    import tfflannel.models.ensemble  # noqa: F401

    for path in (a, b):
        with zipfile.ZipFile(path) as archive, h5py.File(archive.open("model.weights.h5")) as handle:
            assert "optimizer" not in handle, f"{path} holds optimizer state"
    left = keras.saving.load_model(a, compile=False).get_weights()
    right = keras.saving.load_model(b, compile=False).get_weights()
    assert len(left) == len(right) > 0
    for x, y in zip(left, right, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample_workdir):
    """An uninterrupted train-patch + predict-base."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _in_process("train-patch", *PATCH, "--data", sample_workdir, "--out", out)
    _in_process("predict-base", "--run", out, *PREDICT)
    return out


@pytest.mark.slow
def test_train_patch_and_predict_base_killed_at_seeded_events_end_as_uninterrupted(reference, sample_workdir,
                                                                                   tmp_path):
    rng = np.random.default_rng(11)
    out = tmp_path / "run"
    # As the second epoch starts (Keras writes `Epoch 2/2`), after the first epoch's commit.
    output = _kill_then_finish(["train-patch", *PATCH, "--data", sample_workdir, "--out", out], "Epoch 2/2")
    assert "ran out of data" not in output
    assert (out / "history.csv").read_text() == (reference / "history.csv").read_text(), "same epochs, same values"
    _assert_same_weights(out / "model.keras", reference / "model.keras")
    assert not any((out / "resume").glob("*.weights.h5")), "a complete run keeps no optimizer checkpoint"

    _kill_then_finish(["predict-base", "--run", out, *PREDICT], "predict-base " + rng.choice(["train", "valid"]))
    for role in ("train", "valid", "test"):
        assert (out / "predictions" / f"{role}.csv").read_bytes() == \
            (reference / "predictions" / f"{role}.csv").read_bytes(), role

    output = _in_process("train-patch", *PATCH, "--data", sample_workdir, "--out", out)
    assert "is complete" in output and "Epoch 1/2" not in output, output
    assert "up to date" in _in_process("predict-base", "--run", out, *PREDICT)
    changed = _in_process("predict-base", "--run", out, "--k", "2", "--set", "inference.images_per_batch=2")
    assert "recomputing, inputs changed: k: 3 -> 2" in changed, changed


def _fake_member(path, workdir, seed, n=24):
    """A base-learner run with predictions (the ensemble needs only run.yaml and predictions/)."""
    import yaml

    from tfflannel import CLASS_NAMES
    from tfflannel.predictions import write_predictions

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    (path / "run.yaml").write_text(yaml.safe_dump({"kind": "patch", "backbone": f"b{seed}", "fold": 1,
                                                    "workdir": os.path.relpath(workdir, path), "input_size": 32}))
    for role in ("train", "valid", "test"):
        labels = np.arange(n) % 4
        probs = rng.dirichlet(np.ones(4), n) + np.eye(4)[labels]
        probs /= probs.sum(axis=1, keepdims=True)
        write_predictions(path, role, [f"{role}{i}" for i in range(n)], labels, probs, probs)
    assert len(CLASS_NAMES) == 4


@pytest.mark.slow
def test_train_ensemble_killed_at_a_seeded_epoch_ends_as_uninterrupted(tmp_path, sample_workdir):
    members = [tmp_path / "m0", tmp_path / "m1"]
    for seed, member in enumerate(members):
        _fake_member(member, sample_workdir, seed)
    args = ["--runs", ",".join(map(str, members)), "--set", "ensemble.epochs=20", "--set", "ensemble.batch_size=4",
            "--set", "ensemble.learning_rate=0.01", "--set", "ensemble.lr_milestones=[20]"]
    _in_process("train-ensemble", *args, "--out", tmp_path / "reference")
    rng = np.random.default_rng(5)
    _kill_then_finish(["train-ensemble", *args, "--out", tmp_path / "killed"], f"Epoch {int(rng.integers(2, 19))}/20")
    for name in ("history.csv", "predictions/test.csv"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    _assert_same_weights(tmp_path / "killed" / "model.keras", tmp_path / "reference" / "model.keras")
    history = list(csv.DictReader(open(tmp_path / "reference" / "history.csv")))
    assert [int(r["epoch"]) for r in history] == list(range(20))

    from click.testing import CliRunner

    from tfflannel.cli import main

    assert "is complete" in _in_process("train-ensemble", *args, "--out", tmp_path / "killed")
    _fake_member(tmp_path / "m2", sample_workdir, 7)           # new predictions for member 0: the ensemble is stale
    (tmp_path / "m0" / "predictions" / "test.csv").write_bytes((tmp_path / "m2" / "predictions" / "test.csv")
                                                               .read_bytes().replace(b"test", b"test"))
    result = CliRunner().invoke(main, ["train-ensemble", *map(str, args), "--out", str(tmp_path / "killed")])
    assert result.exit_code == 2 and "member0.test_sha256" in result.output and "--force" in result.output, \
        result.output
