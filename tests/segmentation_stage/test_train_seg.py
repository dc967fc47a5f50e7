"""A short train-seg run on real pairs: the loss falls and every output is written."""

import csv
import json

import keras
import yaml
from click.testing import CliRunner

from tfflannel.cli import main


def test_train_seg_cli_loss_decreases_and_writes_outputs(tmp_path, sample_seg_dir):
    out = tmp_path / "seg"
    result = CliRunner().invoke(main, [
        "train-seg", "--pairs", str(sample_seg_dir), "--out", str(out), "--model", "fcdn_test", "--epochs", "4",
        "--set", "segmentation.input_size=64", "--set", "segmentation.batch_size=4",
        "--set", "segmentation.learning_rate=0.002", "--set", "segmentation.augment=false",
        "--set", "segmentation.lr_schedule=plateau",
    ])
    assert result.exit_code == 0, result.output
    with open(out / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    losses = [float(row["loss"]) for row in history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert all(0.0 <= float(row["val_jaccard"]) <= 1.0 for row in history)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_pairs"] + metrics["validation_pairs"] == 20 and metrics["epochs_run"] == 4
    assert 0.0 <= metrics["val_jaccard_inference"] <= 1.0
    assert yaml.safe_load((out / "config.yaml").read_text())["segmentation"]["model"] == "fcdn_test"
    assert any((out / "logs").rglob("*.tfevents*")), "TensorBoard logs written"
    model = keras.saving.load_model(out / "model.keras", compile=False)
    assert model.output_shape == (None, 64, 64, 2)
    # a setting only `segment` reads does not make the run stale; one that changes the training does
    again = CliRunner().invoke(main, [
        "train-seg", "--pairs", str(sample_seg_dir), "--out", str(out), "--model", "fcdn_test", "--epochs", "4",
        "--set", "segmentation.input_size=64", "--set", "segmentation.batch_size=4",
        "--set", "segmentation.learning_rate=0.002", "--set", "segmentation.augment=false",
        "--set", "segmentation.lr_schedule=plateau", "--set", "segmentation.min_mask_confidence=0.9"])
    assert again.exit_code == 0 and "complete" in again.output, again.output
    changed = CliRunner().invoke(main, ["train-seg", "--pairs", str(sample_seg_dir), "--out", str(out),
                                        "--model", "fcdn_test", "--epochs", "5"])
    assert changed.exit_code != 0 and "segmentation.epochs: 4 -> 5" in changed.output, changed.output


def test_train_seg_without_data_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["train-seg", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no training data" in result.output


def test_segment_only_keys_are_segmentation_settings_that_train_seg_does_not_read():
    """The keys left out of a train-seg run's staleness check exist, and train.py reads none of them."""
    import dataclasses
    import inspect

    import tfflannel.segmentation.train as train_module
    from tfflannel.config import SegmentationConfig

    assert set(train_module.SEGMENT_ONLY_KEYS) <= {f.name for f in dataclasses.fields(SegmentationConfig)}
    source = inspect.getsource(train_module)
    read = [key for key in train_module.SEGMENT_ONLY_KEYS if f"seg.{key}" in source or f"segmentation.{key}" in source]
    assert not read, f"train.py reads {read}: they change a train-seg run and must make it stale"


def test_the_cosine_schedule_drives_the_segmenters_learning_rate():
    """`segmentation.lr_schedule: cosine` gives train-seg the `cosine_decay` of the run's epochs and rate."""
    import numpy as np

    from tfflannel.config import load_config
    from tfflannel.schedules import cosine_decay
    from tfflannel.segmentation.train import SegmenterTask

    config = load_config(None, ["segmentation.lr_schedule=cosine", "segmentation.epochs=20",
                                "segmentation.learning_rate=0.01", "segmentation.validation_share=0"])
    task = SegmenterTask([], config.segmentation)
    task.train_x = task.val_x = np.zeros((0, 8, 8, 1), "float32")
    task.val_y = np.zeros((0, 8, 8), "uint8")
    schedulers = [c for c in task.callbacks(config, None, None, None)
                  if isinstance(c, keras.callbacks.LearningRateScheduler)]
    assert len(schedulers) == 1
    expected = cosine_decay(20, 0.01)
    assert [schedulers[0].schedule(e) for e in (0, 5, 10, 19)] == [expected(e) for e in (0, 5, 10, 19)]
    assert schedulers[0].schedule(10) == 0.005
