"""ResumableFit on a tiny model: early stopping and plateau state survive a restart, model.keras is the best epoch
without optimizer state, a complete run is not retrained, a changed run is refused; RunInfo round trip."""

import csv
import json
import zipfile

import h5py
import keras
import numpy as np
import pytest

from tests.seeded_training import KillAtEpoch, SeededBatches
from tfflannel.resume import ResumableFit, StaleRunError
from tfflannel.resume_state import read_fit_state
from tfflannel.run_info import RunInfo, load_run_info, relative_to_run, save_run_info

SCORES = [0.1, 0.5, 0.3, 0.2, 0.9, 0.95]          # best at epoch 1, then two epochs without gain: stop after 3


class _Score(keras.callbacks.Callback):
    """A scripted validation score, and the weights at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = SCORES[epoch]
        self.weights[epoch] = [w.copy() for w in self.model.get_weights()]


def _batch(rng):
    x = rng.normal(size=(8, 4)).astype("float32")
    return x, (x.sum(axis=1, keepdims=True) > 0).astype("float32")


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.3),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.AdamW(0.01), loss="binary_crossentropy")
    return model


def _train(run_dir, kill_at=None, fingerprint=None, force=False, ignore=()):
    fit = ResumableFit(run_dir, len(SCORES), fingerprint or {"lr": 0.01}, seed=0, monitor="score", patience=2,
                       force=force, ignore=ignore)
    model, score = _model(), _Score()
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="score", mode="max", patience=1, factor=0.5)
    callbacks = [score, plateau] + ([KillAtEpoch(kill_at)] if kill_at is not None else [])
    fit.fit(model, SeededBatches(_batch, 3, fit.initial_epoch), callbacks=callbacks)
    return fit, score, model


def _history(run_dir):
    with open(run_dir / "history.csv") as handle:
        return list(csv.DictReader(handle))


def test_early_stopping_and_plateau_state_survive_a_restart(tmp_path):
    reference, score, _ = _train(tmp_path / "reference")
    assert reference.complete and reference.state.stopped_early and reference.state.best_epoch == 1
    assert [int(r["epoch"]) for r in _history(tmp_path / "reference")] == [0, 1, 2, 3]

    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "killed", kill_at=3)             # killed after epoch 2's commit (wait = 1)
    state = json.loads((tmp_path / "killed" / "resume" / "state.json").read_text())
    assert state["epochs_done"] == 3 and state["wait"] == 1 and state["best"] == 0.5
    resumed, _, _ = _train(tmp_path / "killed")
    assert resumed.state.stopped_early, "the restored wait stops the run after epoch 3, as uninterrupted"
    assert 0 < state["train_seconds"] < resumed.state.train_seconds, "the time of both processes is summed"
    assert (tmp_path / "killed" / "history.csv").read_text() == (tmp_path / "reference" / "history.csv").read_text()
    learning_rates = [float(r["learning_rate"]) for r in _history(tmp_path / "killed")]
    assert learning_rates == pytest.approx([0.01, 0.01, 0.01, 0.005])
    plateau = next(v for k, v in resumed.state.callbacks.items() if "ReduceLROnPlateau" in k)
    assert plateau == next(v for k, v in reference.state.callbacks.items() if "ReduceLROnPlateau" in k)
    assert plateau["best"] == 0.5, "ReduceLROnPlateau's best and counters were restored, not reset"

    best = keras.saving.load_model(tmp_path / "killed" / "model.keras", compile=False).get_weights()
    for saved, expected in zip(best, score.weights[1], strict=True):
        np.testing.assert_array_equal(saved, expected)    # the best epoch's weights, not the last epoch's
    with zipfile.ZipFile(tmp_path / "killed" / "model.keras") as archive, \
            h5py.File(archive.open("model.weights.h5")) as handle:
        assert "optimizer" not in handle
    assert not list((tmp_path / "killed" / "resume").glob("*.weights.h5")), "checkpoint dropped when complete"


def test_complete_run_is_not_retrained_changed_run_is_refused_force_starts_over(tmp_path):
    _train(tmp_path)
    before = (tmp_path / "model.keras").stat().st_mtime_ns
    fit, score, _ = _train(tmp_path)
    assert fit.already_complete and not score.weights, "no epoch ran"
    assert "is complete" in fit.describe() and "--force" in fit.describe()
    assert (tmp_path / "model.keras").stat().st_mtime_ns == before
    with pytest.raises(StaleRunError, match=r"lr: 0\.01 -> 0\.02.*--force"):
        _train(tmp_path, fingerprint={"lr": 0.02})
    fit, score, _ = _train(tmp_path, fingerprint={"lr": 0.01, "qc": 0.9}, ignore=["qc"])
    assert fit.already_complete and not score.weights, "an ignored key, new or changed, does not make it stale"
    with pytest.raises(StaleRunError, match=r"lr: 0\.01 -> 0\.02"):
        _train(tmp_path, fingerprint={"lr": 0.02, "qc": 0.9}, ignore=["qc"])
    fit, score, _ = _train(tmp_path, fingerprint={"lr": 0.02}, force=True)
    assert sorted(score.weights) == [0, 1, 2, 3] and fit.complete


def test_a_kill_before_the_first_commit_starts_clean(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, kill_at=0)
    (tmp_path / "resume").mkdir(exist_ok=True)
    (tmp_path / "resume" / ".epoch-0001.weights.h5").write_bytes(b"half written")
    fit, score, _ = _train(tmp_path)
    assert fit.complete and sorted(score.weights) == [0, 1, 2, 3]
    assert not list((tmp_path / "resume").glob(".*"))


def test_a_run_started_before_train_seconds_was_recorded_resumes_with_it_unknown(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, kill_at=2)
    path = tmp_path / "resume" / "state.json"
    state = json.loads(path.read_text())
    del state["train_seconds"]                                  # what tfflannel wrote before it recorded the time
    path.write_text(json.dumps(state))
    fit, score, _ = _train(tmp_path)
    assert fit.complete and sorted(score.weights) == [2, 3]
    assert fit.state.train_seconds is None, "not the resumed process's time alone, passed off as the run's"


def test_run_info_round_trip_with_relative_paths(tmp_path):
    work, run = tmp_path / "work", tmp_path / "runs" / "a"
    work.mkdir()
    run.mkdir(parents=True)
    info = RunInfo(kind="patch", fold=2, workdir=relative_to_run(work, run), backbone="mobilenet_v2", input_size=64,
                   k=8, seed=3)
    save_run_info(run, info)
    assert "work" in (run / "run.yaml").read_text() and str(tmp_path) not in (run / "run.yaml").read_text()
    loaded = load_run_info(run)
    assert loaded == info and loaded.workdir_path(run).resolve() == work.resolve()
    assert loaded["input_size"] == 64 and loaded.display_name == "patch:mobilenet_v2"
    (run / "run.yaml").write_text("kind: patch\nfold: 1\nworkdir: .\nbogus: 1\n")
    with pytest.raises(ValueError, match="run.yaml: unknown key.*bogus"):
        load_run_info(run)


def _interrupted_equals_uninterrupted(train, tmp_path):
    """train(out_dir, extra_callbacks) killed (exception) at the start of epoch 1, rerun; vs one uninterrupted run."""
    train(tmp_path / "reference", [])
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "killed", [KillAtEpoch(1)])
    train(tmp_path / "killed", [])
    assert (tmp_path / "killed" / "history.csv").read_text() == (tmp_path / "reference" / "history.csv").read_text()
    left = keras.saving.load_model(tmp_path / "killed" / "model.keras", compile=False).get_weights()
    right = keras.saving.load_model(tmp_path / "reference" / "model.keras", compile=False).get_weights()
    for x, y in zip(left, right, strict=True):
        np.testing.assert_array_equal(x, y)


def test_global_and_segmentation_epochs_derive_from_seed_and_epoch(sample_workdir, sample_seg_dir):
    """Epoch 1 built alone (a resumed run) is exactly epoch 1 of the uninterrupted stream, and differs from epoch 0."""
    from tfflannel.data.manifest import load_manifest
    from tfflannel.learners.global_data import global_training_dataset, manifest_partition
    from tfflannel.segmentation.tf_pipeline import make_training_dataset

    rows = manifest_partition(load_manifest(sample_workdir), "train", 1)[:6]
    images = np.random.default_rng(0).random((6, 16, 16, 1)).astype("float32")
    labels = (images[..., 0] > 0.5).astype("uint8")
    for build, steps in ((lambda **kw: global_training_dataset(rows, 24, 16, 4, seed=3, **kw), 2),
                         (lambda **kw: make_training_dataset(images, labels, 4, seed=3, **kw), 2)):
        stream = [x.numpy() for x, _ in build(epochs=2)]
        alone = [x.numpy() for x, _ in build(first_epoch=1, epochs=2)]
        assert len(stream) == 2 * steps and len(alone) == steps
        for a, b in zip(alone, stream[steps:], strict=True):
            np.testing.assert_array_equal(a, b)
        assert not all(np.array_equal(a, b) for a, b in zip(stream[:steps], stream[steps:], strict=True))


@pytest.mark.slow
def test_train_seg_resumes_exactly(tmp_path, sample_seg_dir):
    from tfflannel.config import load_config
    from tfflannel.segmentation.readers import read_pairs
    from tfflannel.segmentation.train import train_segmenter

    config = load_config(overrides=["segmentation.model=fcdn_test", "segmentation.epochs=2",
                                    "segmentation.input_size=32", "segmentation.batch_size=8"])
    pairs = read_pairs(sample_seg_dir)[:8]
    before = []                                     # each call's committed state when it starts

    def train(out, extra):
        before.append(read_fit_state(out))
        return train_segmenter(config, pairs, out, progress=False, extra_callbacks=extra)

    _interrupted_equals_uninterrupted(train, tmp_path)
    metrics = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert metrics == {**json.loads((tmp_path / "reference" / "metrics.json").read_text()),
                       "train_seconds": metrics["train_seconds"]}
    # the resumed run's time adds the killed process's committed epoch to its own
    killed, resumed = before[2], read_fit_state(tmp_path / "killed")
    assert killed.epochs_done == 1 and 0 < killed.train_seconds < resumed.train_seconds
    assert metrics["train_seconds"] == round(resumed.train_seconds, 1)
