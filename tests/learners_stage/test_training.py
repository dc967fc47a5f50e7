"""train-patch / train-global / predict-base on the bundled sample: outputs, resume, strategy, scores."""

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from tfflannel import CLASS_NAMES
from tfflannel.cli import main
from tfflannel.learners.infer import PREDICTION_COLUMNS, predict_base
from tfflannel.patches.pipeline import evaluation_dataset

SMALL = ["--set", "patched.patch_size=64", "--set", "patched.val_patches=2", "--set", "patched.learning_rate=0.0001"]


def _history(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory, sample_workdir):
    out = tmp_path_factory.mktemp("patch-run")
    # The tiny test_cnn backbone: these tests check train-patch's outputs and predict-base's arithmetic, which are
    # the same for every backbone (test_the_compiled_base_learner_learns_a_fixed_batch_by_heart checks learning).
    result = CliRunner().invoke(main, ["train-patch", "--backbone", "test_cnn", "--fold", "1", "--data",
                                       str(sample_workdir), "--out", str(out), "--epochs", "2", "--batch-size", "8",
                                       *SMALL, "--set", "patched.patches_per_image=4",
                                       "--set", "patched.augment=false"])
    assert result.exit_code == 0, result.output
    return out


def test_train_patch_writes_every_output(patch_run):
    history = _history(patch_run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [0, 1]
    assert all(np.isfinite(float(r["loss"])) for r in history)
    assert {"val_macro_f1", "learning_rate"} <= set(history[0])
    assert all(f"val_f1_{c}" in history[0] for c in CLASS_NAMES)
    for name in ("model.keras", "config.yaml", "run.yaml"):
        assert (patch_run / name).is_file()
    assert any((patch_run / "logs").rglob("*.tfevents*"))
    assert not (patch_run / "backup").exists() or not any((patch_run / "backup").iterdir())


def test_predict_base_matches_direct_computation(patch_run, sample_workdir):
    predict_base(patch_run, k=6, images_per_batch=3, seed=5, progress=False)
    model = keras.saving.load_model(patch_run / "model.keras", compile=False)
    with open(patch_run / "predictions" / "valid.csv") as handle:
        rows = {r["image_id"]: r for r in csv.DictReader(handle)}
    assert list(next(iter(rows.values()))) == list(PREDICTION_COLUMNS)
    checked = 0
    for patches, labels, ids in evaluation_dataset(sample_workdir, "valid", 1, 6, 64, seed=5, images_per_batch=1):
        probs = np.asarray(model.predict_on_batch(patches))          # the same 6 patches, one image at a time
        image_id = ids.numpy()[0].decode()
        votes = np.bincount(probs.argmax(axis=1), minlength=4) / 6
        row = rows[image_id]
        np.testing.assert_allclose([float(row[f"vote_{c}"]) for c in CLASS_NAMES], votes, atol=1e-6)
        np.testing.assert_allclose([float(row[f"prob_{c}"]) for c in CLASS_NAMES], probs.mean(axis=0), atol=1e-5)
        assert row["label"] == CLASS_NAMES[int(labels.numpy()[0])]
        checked += 1
    assert checked == len(rows) > 0
    for role in ("train", "test"):
        assert (patch_run / "predictions" / f"{role}.csv").is_file()


def test_predict_base_refuses_a_cache_rebuilt_since_training(patch_run, tmp_path, sample_workdir):
    import shutil

    import yaml

    from tfflannel.errors import InputError

    copy = tmp_path / "run"
    shutil.copytree(patch_run, copy)
    info = yaml.safe_load((copy / "run.yaml").read_text())
    assert info["cache_key"]["input"] == "equalized"        # recorded at training time
    info["cache_key"]["input"] = "raw"      # as if trained on a raw cache that was then rebuilt equalised
    (copy / "run.yaml").write_text(yaml.safe_dump(info))
    with pytest.raises(InputError, match=r"input: 'raw' -> 'equalized'") as error:
        predict_base(copy, sample_workdir, k=2, progress=False)
    assert "rerun `segment`" in str(error.value)


def test_train_global_and_predict_base_k1(tmp_path, sample_workdir):
    out = tmp_path / "global"
    result = CliRunner().invoke(main, ["train-global", "--backbone", "test_cnn", "--fold", "2", "--data",
                                       str(sample_workdir), "--out", str(out), "--epochs", "1", "--batch-size", "6",
                                       "--set", "global_learner.resize=80", "--set", "global_learner.crop_size=64"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["predict-base", "--run", str(out)])
    assert result.exit_code == 0, result.output
    with open(out / "predictions" / "test.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows
    for row in rows:
        votes = [float(row[f"vote_{c}"]) for c in CLASS_NAMES]
        assert sorted(votes) == [0.0, 0.0, 0.0, 1.0], "K = 1: the vote is one-hot"


MIRRORED_SCRIPT = textwrap.dedent("""
    import sys, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfflannel.config import load_config
    from tfflannel.learners.train import train_patch_learner
    config = load_config(overrides=["runtime.strategy=mirrored", "patched.batch_size=3", "patched.epochs=1",
                                    "patched.patch_size=32", "patched.val_patches=1"])
    history = train_patch_learner(config, "mobilenet_v2", 1, sys.argv[1], sys.argv[2], progress=False)
    import tfflannel.learners.strategy as s
    print("REPLICAS", s.make_strategy("mirrored").num_replicas_in_sync, "LOSS", history.history["loss"][-1])
""")


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus_with_uneven_batch(tmp_path, sample_workdir):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(sample_workdir), str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REPLICAS 2" in result.stdout
    assert "rounded up to 4" in result.stderr
    assert np.isfinite(float(result.stdout.split("LOSS")[1]))


@pytest.mark.parametrize("visible_gpus", [None, 0, 1], ids=["this-host", "no-gpu", "one-gpu"])
def test_strategy_default_without_gpus(monkeypatch, visible_gpus):
    """`auto` is the default one-replica strategy with at most one GPU, MirroredStrategy over all of them beyond.

    `no-gpu`/`one-gpu` show make_strategy a device list of that size, so they hold on any host; `this-host` checks
    the choice against the GPUs this host really has (none on CI, any number on a GPU host).
    """
    from tfflannel.learners.strategy import make_strategy, replica_batch_size

    if visible_gpus is not None:
        real = tf.config.list_logical_devices
        fake = [tf.config.LogicalDevice(f"/device:GPU:{i}", "GPU") for i in range(visible_gpus)]
        monkeypatch.setattr(tf.config, "list_logical_devices",
                            lambda device_type=None: fake if device_type == "GPU" else real(device_type))
    gpus = len(tf.config.list_logical_devices("GPU"))
    strategy = make_strategy("auto")
    if gpus <= 1:
        assert strategy is tf.distribute.get_strategy()
        assert strategy.num_replicas_in_sync == 1 and replica_batch_size(5, strategy) == 5
    else:
        assert isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync == gpus
        assert replica_batch_size(5, strategy) % gpus == 0


def test_the_compiled_base_learner_learns_a_fixed_batch_by_heart():
    """Learning, with a margin noise cannot cross: 8 fixed patches, 40 full-batch steps, loss below a quarter.

    (Two epochs of train-patch on the sample move the epoch-mean loss by a few hundredths, as noise does: the
    patch_run fixture checks outputs, this checks that train-patch's compiled model, loss and optimizer learn.)
    """
    from tfflannel.config import load_config
    from tfflannel.learners.train import _compiled_classifier

    keras.utils.set_random_seed(0)
    cfg = load_config(None, ["patched.learning_rate=0.001"]).patched
    model = _compiled_classifier(cfg, "mobilenet_v2", 32, "none")
    rng = np.random.default_rng(0)
    images = rng.uniform(0.0, 1.0, (8, 32, 32, 1)).astype("float32")
    labels = np.arange(8) % 4
    losses = model.fit(images, labels, batch_size=8, epochs=40, shuffle=False, verbose=0).history["loss"]
    assert losses[-1] < 0.25 * losses[0], losses


def test_optional_l1_adds_a_penalty_per_kernel():
    from tfflannel.learners.train import _apply_l1
    from tfflannel.models.classifier import build_classifier

    model = build_classifier("mobilenet_v2", 32)
    _apply_l1(model, 1e-5)
    model(np.zeros((1, 32, 32, 1), np.float32))
    kernels = [v for v in model.trainable_variables if "kernel" in v.path]
    assert len(model.losses) == len(kernels) > 0
    expected = 1e-5 * sum(float(np.abs(v.numpy()).sum()) for v in kernels)
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-4)
