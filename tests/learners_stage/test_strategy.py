"""Strategy selection from TF_CONFIG, chief-only writing, replica-safe batches for the ensemble."""

import json

import numpy as np
import pytest

from tfflannel.learners import strategy as s


def _config(kind, index, chief=False, workers=2):
    cluster = {"worker": [f"127.0.0.1:{2000 + i}" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["127.0.0.1:1999"]
    return {"cluster": cluster, "task": {"type": kind, "index": index}}


@pytest.mark.parametrize("config, workers, chief", [
    ({}, 0, True),
    (_config("worker", 0), 2, True),
    (_config("worker", 1), 2, False),
    (_config("worker", 0, chief=True), 3, False),
    (_config("chief", 0, chief=True), 3, True),
    (_config("worker", 0, workers=1), 1, True),
])
def test_cluster_and_chief_from_tf_config(config, workers, chief):
    assert s.cluster_workers(config) == workers and s.is_chief(config) == chief


def test_bad_tf_config_and_strategy_name(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        s.tf_config()
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="multi_worker"):
        s.make_strategy("tpu")


def test_non_chief_writes_to_a_temporary_copy_that_is_removed(tmp_path, monkeypatch):
    run = tmp_path / "run"
    (run / "resume").mkdir(parents=True)
    (run / "resume" / "state.json").write_text('{"epochs_done": 1}')
    (run / "history.csv").write_text("epoch\n0\n")
    monkeypatch.setenv("TF_CONFIG", json.dumps(_config("worker", 1)))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)

    @s.chief_writes
    def train(config, out_dir, extra=0):
        (out_dir / "model.keras").write_text("worker")
        return out_dir, (out_dir / "resume" / "state.json").read_text()

    where, state = train(None, run)
    assert where != run and where.parent == tmp_path / "tmp" and state == '{"epochs_done": 1}'
    assert not where.exists() and not (run / "model.keras").exists()      # nothing of the worker is kept
    monkeypatch.setenv("TF_CONFIG", json.dumps(_config("worker", 0)))
    assert train(None, out_dir=run)[0] == run and (run / "model.keras").read_text() == "worker"


def test_ensemble_batches_split_evenly_over_replicas():
    from tfflannel.ensemble.train import EpochBatches

    class Replicas:
        num_replicas_in_sync = 3

    batch = s.replica_batch_size(8, Replicas())
    x, y = np.arange(20, dtype=np.float32)[:, None], np.zeros((20, 4), np.float32)
    batches = EpochBatches(x, y, batch, seed=1, drop_remainder=True)
    assert batch == 9 and len(batches) == 2 and all(len(batches[i][0]) == 9 for i in range(len(batches)))
    assert len(EpochBatches(x, y, batch, seed=1)) == 3
