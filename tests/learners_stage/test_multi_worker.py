"""Two worker processes on 127.0.0.1 train one model with MultiWorkerMirroredStrategy (TF_CONFIG, `auto`).

Every worker dumps its weights after each epoch (an extra callback), so the test compares what the
chief saved with what the other worker holds, and a run killed after its first epoch and started
again with what an uninterrupted run gives.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import tfflannel.models.classifier  # noqa: F401  (registers the custom layers model.keras holds)

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600          # per launch of both workers (~30 s on an idle 2-core host); a hang fails the test

WORKER_SCRIPT = textwrap.dedent("""
    import glob, json, os, sys, tempfile
    import keras, numpy as np
    from tfflannel.config import load_config
    from tfflannel.learners.train import train_patch_learner

    workdir, out, dump, kill_before = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]

    class Dump(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == kill_before:         # after the previous epoch's commit: a kill between two epochs
                os._exit(3)

        def on_epoch_end(self, epoch, logs=None):
            np.savez(f"{dump}/worker{index}-epoch{epoch}.npz", *self.model.get_weights())

        def on_train_end(self, logs=None):    # what a non-chief worker wrote, before its directory is removed
            files = glob.glob(os.path.join(tempfile.gettempdir(), "tfflannel-worker*", "*"))
            print("TEMP_FILES", json.dumps(sorted(os.path.basename(f) for f in files)))

    config = load_config(overrides=["patched.batch_size=4", "patched.epochs=2",
                                    "patched.patch_size=32", "patched.val_patches=1", "patched.patches_per_image=1",
                                    "patched.augment=false"])
    fit = train_patch_learner(config, "mobilenet_v2", 1, workdir, out, weights="none", progress=False,
                              extra_callbacks=[Dump()])
    from tfflannel.learners.strategy import make_strategy
    print("REPLICAS", make_strategy(config.runtime.strategy).num_replicas_in_sync)
    print("RUN_DIR", fit.run_dir)
""")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(workdir, out, dump, tmp, kill_before=-1):
    """Start two workers with one run directory `out`; wait for both (bounded); return [(rc, stdout, stderr)]."""
    dump.mkdir(parents=True, exist_ok=True)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    workers = []
    for index in range(2):
        (tmp / f"tmp{index}").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="-1", TMPDIR=str(tmp / f"tmp{index}"),
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        workers.append(subprocess.Popen(
            [sys.executable, "-c", WORKER_SCRIPT, str(workdir), str(out), str(dump), str(kill_before)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=TIMEOUT_S)
            results.append((worker.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        for worker in workers:
            worker.kill()
        tails = [worker.communicate()[1][-3000:] for worker in workers]
        pytest.fail(f"the workers did not finish in {TIMEOUT_S} s; their stderr:\n" + "\n---\n".join(tails))
    return results


def _weights(path):
    with np.load(path) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


def _assert_equal_weights(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory, sample_workdir):
    root = tmp_path_factory.mktemp("multi-worker")
    results = _run_workers(sample_workdir, root / "run", root / "dump", root)
    return root, results


@pytest.mark.slow
def test_two_workers_train_one_model_and_only_the_chief_writes(two_worker_run):
    root, results = two_worker_run
    for index, (rc, stdout, stderr) in enumerate(results):
        assert rc == 0, f"worker {index} exited {rc}:\n{stderr[-4000:]}"
        assert "REPLICAS 2" in stdout, stdout                  # `auto` chose the multi-worker strategy
    run = root / "run"
    # The same model on both workers after every step of both epochs.
    for epoch in (0, 1):
        _assert_equal_weights(_weights(root / "dump" / f"worker0-epoch{epoch}.npz"),
                              _weights(root / "dump" / f"worker1-epoch{epoch}.npz"))
    # The chief saved the best epoch's model: it holds what the other worker held after that epoch.
    state = json.loads((run / "resume" / "state.json").read_text())
    assert state["complete"] and state["epochs_done"] == 2
    saved = keras.saving.load_model(run / "model.keras", compile=False).get_weights()
    _assert_equal_weights(saved, _weights(root / "dump" / f"worker1-epoch{state['best_epoch']}.npz"))
    # Only the chief wrote into the run directory; worker 1 wrote into a temporary one, removed at the end.
    assert results[0][1].split("RUN_DIR ")[1].strip() == str(run)
    worker_dir = Path(results[1][1].split("RUN_DIR ")[1].strip())
    assert worker_dir.parent == root / "tmp1" and not worker_dir.exists() and not any((root / "tmp1").iterdir())
    assert "model.keras" in json.loads(results[1][1].split("TEMP_FILES ")[1].splitlines()[0])
    assert json.loads(results[0][1].split("TEMP_FILES ")[1].splitlines()[0]) == []
    assert {"model.keras", "history.csv", "config.yaml", "run.yaml", "resume", "logs"} <= {
        p.name for p in run.iterdir()}
    assert len((run / "history.csv").read_text().strip().splitlines()) == 3


@pytest.mark.slow
def test_killed_two_worker_run_resumes_from_the_chiefs_state(two_worker_run, sample_workdir):
    root, results = two_worker_run
    assert all(rc == 0 for rc, _, _ in results)
    resumed = root / "resumed"
    killed = _run_workers(sample_workdir, resumed / "run", resumed / "dump", resumed, kill_before=1)
    assert [rc for rc, _, _ in killed] == [3, 3], [stderr[-2000:] for _, _, stderr in killed]
    assert json.loads((resumed / "run" / "resume" / "state.json").read_text())["epochs_done"] == 1
    for path in (resumed / "dump").iterdir():
        path.unlink()
    again = _run_workers(sample_workdir, resumed / "run", resumed / "dump", resumed)
    for index, (rc, _, stderr) in enumerate(again):
        assert rc == 0, f"worker {index} exited {rc}:\n{stderr[-4000:]}"
        assert "resuming after epoch 1 of 2" in stderr
    assert not (resumed / "dump" / "worker0-epoch0.npz").exists()      # epoch 0 was not trained again
    for index in range(2):      # both workers end where the uninterrupted run ended
        _assert_equal_weights(_weights(resumed / "dump" / f"worker{index}-epoch1.npz"),
                              _weights(root / "dump" / "worker0-epoch1.npz"))
