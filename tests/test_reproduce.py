"""`reproduce`: the job graph, shards, dry-run lines, locks; a real grid on the bundled sample (slow)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tfflannel import reproduce
from tfflannel.job_runner import Runner, is_complete, job_lock, run_cli_job
from tfflannel.reproduce import Job, build_jobs, parse_folds, shard_jobs

REPO = Path(__file__).resolve().parents[1]


def _grid(parts=1, part=1, modes=("patch", "global")):
    return build_jobs("work", "runs", [1, 2], ["mobilenet_v2", "resnet50"], list(modes), shard=(part, parts))


def test_grid_counts_and_dependency_order():
    jobs = _grid()
    kinds = [j.kind for j in jobs]
    # 1 segment + 2 folds x 2 backbones x 2 modes x (train + predict) + 2 x 2 ensembles + evaluate + 2 audits
    assert kinds.count("segment") == 1 and kinds.count("train") == 8 and kinds.count("predict") == 8
    assert kinds.count("ensemble") == 4 and kinds[-3:] == ["evaluate", "audit", "audit"]
    audit = jobs[-1]
    assert audit.name == "audit f2" and audit.needs == ("evaluate",)
    assert audit.args[audit.args.index("--ensemble") + 1] == str(Path("runs/f2/ensemble_patched"))
    assert len(audit.args[audit.args.index("--runs") + 1].split(",")) == 4
    position = {j.name: i for i, j in enumerate(jobs)}
    for job in jobs:
        assert all(position[n] < position[job.name] for n in job.needs), job.name
    patch_ensemble = next(j for j in jobs if j.name == "train-ensemble f2 patch")
    assert patch_ensemble.needs == ("predict-base f2 patch mobilenet_v2", "predict-base f2 patch resnet50")
    assert str(Path("runs/f2/patch_resnet50")) in patch_ensemble.args[patch_ensemble.args.index("--runs") + 1]
    # global-only grids need no segmentation
    assert "segment" not in [j.kind for j in _grid(modes=("global",))]


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_shards_split_the_grid_exactly_once(parts):
    single = [j.name for j in _grid() if j.kind != "segment"]
    shares = [[j.name for j in shard_jobs(_grid(parts, p), (p, parts)) if j.kind != "segment"]
              for p in range(1, parts + 1)]
    assert sorted(n for share in shares for n in share) == sorted(single)
    # a learner's predict-base runs where it trained; the evaluation runs on shard 1
    for share in shares:
        trains = {n.split(" ", 1)[1] for n in share if n.startswith("train-") and "ensemble" not in n}
        predicts = {" ".join(n.split(" ")[1:2] + n.split(" ")[3:4]) for n in share if n.startswith("predict")}
        assert len(trains) == len(predicts)
    assert "evaluate" in shares[0]
    # every shard segments its own part of the cache
    assert all(("--shard", f"{p}/{parts}") == shard_jobs(_grid(parts, p), (p, parts))[0].args[3:5]
               for p in range(1, parts + 1))


@pytest.mark.parametrize("text, folds", [("1-5", [1, 2, 3, 4, 5]), ("2", [2]), ("1,3-4", [1, 3, 4])])
def test_parse_folds(text, folds):
    assert parse_folds(text) == folds


@pytest.mark.parametrize("text", ["0", "5-1", "a", "1;2"])
def test_parse_folds_rejects(text):
    with pytest.raises(reproduce.InputError, match="--folds"):
        parse_folds(text)


def test_dry_run_prints_cli_lines_in_order(tmp_path, sample_cls_dir):
    from tfflannel.cli import main
    from tfflannel.data.manifest import prepare_manifest

    prepare_manifest(tmp_path / "work", folders=[sample_cls_dir], folds=2, progress=False)
    result = CliRunner().invoke(main, ["reproduce", "--data", str(tmp_path / "work"), "--out", str(tmp_path / "runs"),
                                       "--folds", "1-2", "--backbones", "mobilenet_v2,resnet50", "--dry-run",
                                       "--set", "patched.epochs=1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 24 and not (tmp_path / "runs").exists()
    assert [line.split()[1] for line in lines[:3]] == ["segment", "train-patch", "predict-base"]
    assert [line.split()[1] for line in lines[-3:]] == ["evaluate", "audit", "audit"]
    assert all("--set patched.epochs=1" in line for line in lines[:-3] + lines[-2:])
    bad = CliRunner().invoke(main, ["reproduce", "--data", str(tmp_path / "work"), "--out", str(tmp_path / "runs"),
                                    "--backbones", "mobilenet_v2,alexnet", "--dry-run"])
    assert bad.exit_code == 2 and "--backbones" in bad.output


def test_lock_keeps_a_second_process_out(tmp_path):
    path = tmp_path / ".jobs" / "x.lock"
    with job_lock(path) as mine:
        assert mine
        other = subprocess.run([sys.executable, "-c", "import fcntl,sys; f=open(sys.argv[1],'a'); "
                                "fcntl.flock(f, fcntl.LOCK_EX|fcntl.LOCK_NB)", str(path)], capture_output=True)
        assert other.returncode != 0 and b"BlockingIOError" in other.stderr
    with job_lock(path) as mine:
        assert mine


def test_each_shard_runs_its_own_part_of_the_segment_job_while_another_shard_runs_its_part(tmp_path):
    """Shard 2's segment part holding its lock must not make shard 1 skip its part as `busy` (it used to: one lock)."""
    ran = []
    jobs = build_jobs("work", tmp_path, [1], ["mobilenet_v2"], ["patch"], shard=(1, 2))
    segment = next(j for j in jobs if j.kind == "segment")
    one, two = (Runner(jobs, tmp_path, shard=(i, 2), wait=0, poll=0.01, execute=lambda j, log: ran.append(j.name))
                for i in (1, 2))
    assert one._slug(segment) != two._slug(segment)
    with job_lock(tmp_path / ".jobs" / f"{two._slug(segment)}.lock") as mine:
        assert mine
        state, _ = one._run_one(segment)
    assert ran == ["segment"] and state == "missing"     # it ran; the cache is incomplete (nothing really segmented)


def test_runner_reports_failed_and_missing_inputs(tmp_path):
    """A failing job blocks its dependants only; an input another shard never makes is reported missing."""
    ran = []

    def execute(job, log):
        ran.append(job.name)
        return "boom" if job.name.startswith("train-global f1") else None

    jobs = build_jobs("work", tmp_path, [1], ["mobilenet_v2"], ["global"])
    lines = []
    states = Runner(jobs, tmp_path, wait=0, poll=0.01, execute=execute, echo=lines.append).run()
    assert states["train-global f1 mobilenet_v2"] == "failed"
    assert states["predict-base f1 global mobilenet_v2"] == "blocked" and "f1 global" not in " ".join(ran[1:])
    assert len(lines) == len(jobs) and (tmp_path / ".jobs" / "train-global_f1_mobilenet_v2.failed").is_file()
    other = Runner(build_jobs("work", tmp_path, [1, 2], ["mobilenet_v2"], ["global"], shard=(2, 2)), tmp_path,
                   shard=(2, 2), wait=0.05, poll=0.01, execute=lambda job, log: None, echo=lines.append).run()
    assert set(other) == {"train-global f2 mobilenet_v2", "predict-base f2 global mobilenet_v2",
                          "train-ensemble f2 global"}


def test_a_failure_on_one_shard_ends_the_other_shards_wait_and_stop_ends_a_run(tmp_path):
    """A job blocked by a failed input leaves a marker too, so a shard waiting for it (with a day's wait) stops at
    once; so does a shard waiting for another shard's failed part of the segment job; `stop` ends a run."""
    def execute(job, log):
        return "boom" if job.name.startswith("train-patch") or job.kind == "segment" else None

    jobs = build_jobs("work", tmp_path, [1], ["mobilenet_v2"], ["patch"], shard=(1, 2))
    one = Runner(jobs, tmp_path, shard=(1, 2), wait=86400, poll=0.01, execute=execute, echo=lambda line: None)
    states = one.run()
    assert states["segment"] == "failed" and states["train-patch f1 mobilenet_v2"] == "blocked"
    assert states["predict-base f1 patch mobilenet_v2"] == "blocked"
    assert (tmp_path / ".jobs" / "predict-base_f1_patch_mobilenet_v2.failed").is_file()
    other = build_jobs("work", tmp_path, [1], ["mobilenet_v2"], ["patch"], shard=(2, 2))
    two = Runner(other, tmp_path, shard=(2, 2), wait=86400, poll=0.01, execute=lambda job, log: None,
                 echo=lambda line: None)
    segment = next(j for j in other if j.kind == "segment")
    state, detail = two._run_one(segment)             # its own part done, shard 1's part failed: no day-long wait
    assert state == "missing" and "segmentation cache" in detail
    ensemble = next(j for j in other if j.kind == "ensemble")
    assert two._wait_for(ensemble.needs).startswith("input failed")   # shard 1's blocked predict-base
    two.stop.set()
    assert two.run() == {} and two._wait_for(["evaluate"]) == "stopped"


def test_is_complete_reads_the_commands_outputs(tmp_path):
    train = Job("t", "train", (), tmp_path)
    assert not is_complete(train)
    (tmp_path / "resume").mkdir()
    (tmp_path / "resume" / "state.json").write_text('{"complete": false}')
    assert not is_complete(train)
    (tmp_path / "resume" / "state.json").write_text('{"complete": true}')
    assert is_complete(train)
    predict = Job("p", "predict", (), tmp_path)
    (tmp_path / "predictions").mkdir()
    (tmp_path / "predictions" / "provenance.json").write_text('{"done": ["train", "valid"]}')
    assert not is_complete(predict)
    (tmp_path / "predictions" / "provenance.json").write_text('{"done": ["test", "train", "valid"]}')
    assert is_complete(predict)


def _dry_run(work, out, *extra):
    from tfflannel.cli import main

    return CliRunner().invoke(main, ["reproduce", "--data", str(work), "--out", str(out), "--folds", "1",
                                     "--modes", "global", "--dry-run", *extra])


@pytest.fixture(scope="module")
def sample_work(tmp_path_factory, sample_cls_dir):
    from tfflannel.data.manifest import prepare_manifest

    work = tmp_path_factory.mktemp("reproduce") / "work"
    prepare_manifest(work, folders=[sample_cls_dir], folds=2, progress=False)
    return work


def _weights_of(lines):
    return {line.split("--backbone ")[1].split()[0]: line.split("--weights ")[1].split()[0]
            for line in lines if " train-global " in line}


def test_default_backbones_are_the_papers_five(sample_work, tmp_path):
    import importlib.util

    from tfflannel.backbone_names import TORCHVISION_BACKBONE_NAMES

    result = _dry_run(sample_work, tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert list(_weights_of(result.output.splitlines())) == list(TORCHVISION_BACKBONE_NAMES)
    assert set(TORCHVISION_BACKBONE_NAMES) == {"densenet161", "inception_v3_tv", "resnet152_tv", "resnext101_32x8d",
                                               "vgg19_bn"}
    assert reproduce.PAPER_BACKBONES is TORCHVISION_BACKBONE_NAMES
    spec = importlib.util.spec_from_file_location("bench_train_step", REPO / "tools" / "bench_train_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.FLANNEL_BACKBONES is TORCHVISION_BACKBONE_NAMES


def test_imagenet_is_refused_for_backbones_without_keras_weights(sample_work, tmp_path):
    result = _dry_run(sample_work, tmp_path / "runs", "--weights", "imagenet")
    assert result.exit_code == 2
    message = result.output.split("--weights imagenet")[1]
    for name in ("densenet161", "inception_v3_tv", "resnet152_tv", "resnext101_32x8d", "vgg19_bn"):
        assert name in message
    assert "import-weights" in message and "--weights-dir" in message
    mixed = _dry_run(sample_work, tmp_path / "runs", "--weights", "imagenet", "--backbones", "mobilenet_v2,vgg19_bn")
    assert mixed.exit_code == 2 and "vgg19_bn" in mixed.output and "mobilenet_v2." not in mixed.output
    keras_only = _dry_run(sample_work, tmp_path / "runs", "--weights", "imagenet", "--backbones", "mobilenet_v2")
    assert keras_only.exit_code == 0 and _weights_of(keras_only.output.splitlines()) == {"mobilenet_v2": "imagenet"}
    assert not (tmp_path / "runs").exists()


def _write_weights_stub(path):
    """A file whose header passes `check_weights_file` for its suffix (its contents fit no backbone)."""
    import zipfile

    import h5py
    import numpy as np
    from safetensors.numpy import save_file

    if path.suffix == ".pth":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    elif path.suffix == ".safetensors":
        save_file({"x": np.zeros(1, np.float32)}, str(path))
    else:
        h5py.File(path, "w").close()


def test_weights_dir_gives_each_backbone_its_file_and_lists_every_missing_one(sample_work, tmp_path):
    weights = tmp_path / "w"
    weights.mkdir()
    for name in ("densenet161.weights.h5", "densenet161.pth", "vgg19_bn.safetensors"):
        _write_weights_stub(weights / name)
    backbones = ["--backbones", "densenet161,vgg19_bn,resnet152_tv,resnext101_32x8d"]
    missing = _dry_run(sample_work, tmp_path / "runs", "--weights-dir", str(weights), *backbones)
    assert missing.exit_code == 2, missing.output
    assert "resnet152_tv.weights.h5" in missing.output and "resnext101_32x8d.weights.h5" in missing.output
    assert "densenet161" not in missing.output and "vgg19_bn" not in missing.output
    _write_weights_stub(weights / "resnet152_tv.pth")
    _write_weights_stub(weights / "resnext101_32x8d.weights.h5")
    result = _dry_run(sample_work, tmp_path / "runs", "--weights-dir", str(weights), *backbones)
    assert result.exit_code == 0, result.output
    assert _weights_of(result.output.splitlines()) == {   # .weights.h5 before .safetensors before .pth
        "densenet161": str(weights / "densenet161.weights.h5"), "vgg19_bn": str(weights / "vgg19_bn.safetensors"),
        "resnet152_tv": str(weights / "resnet152_tv.pth"),
        "resnext101_32x8d": str(weights / "resnext101_32x8d.weights.h5")}
    one_file = _dry_run(sample_work, tmp_path / "runs", "--weights", str(weights / "vgg19_bn.safetensors"), *backbones)
    assert one_file.exit_code == 2 and "--weights-dir" in one_file.output
    both = _dry_run(sample_work, tmp_path / "runs", "--weights", "imagenet", "--weights-dir", str(weights))
    assert both.exit_code == 2 and "give one of them" in both.output


def test_is_complete_segment_only_for_a_cache_of_the_current_manifest(tmp_path):
    from tfflannel.utils import read_csv, write_csv_atomic

    work = tmp_path / "work"
    (work / "cache").mkdir(parents=True)
    manifest = [{"image_id": f"img{i}", "sha256": f"{i:064x}", "path": f"x{i}.png"} for i in range(5)]
    write_csv_atomic(work / "manifest.csv", manifest, ("image_id", "sha256", "path"))
    shards = ["shard-00000-of-00002-aaa.tfrecord", "shard-00001-of-00002-bbb.tfrecord"]
    index = [{"image_id": r["image_id"], "sha256": r["sha256"], "shard": shards[i // 3]}
             for i, r in enumerate(manifest)]
    write_csv_atomic(work / "cache" / "index.csv", index, ("image_id", "sha256", "shard"))
    segment = Job("segment", "segment", (), work / "cache", shard=None)
    assert not is_complete(segment)                                   # no cache.json: not finished
    (work / "cache" / "cache.json").write_text('{"key": {}, "shards": %s}' % str(shards).replace("'", '"'))
    assert is_complete(segment)
    changed = [dict(r, sha256="f" * 64) if r["image_id"] == "img2" else r for r in manifest]
    write_csv_atomic(work / "manifest.csv", changed, ("image_id", "sha256", "path"))
    assert not is_complete(segment)                                   # an image's file changed
    write_csv_atomic(work / "manifest.csv", manifest + [{"image_id": "img9", "sha256": "9" * 64, "path": "y"}],
                     ("image_id", "sha256", "path"))
    assert not is_complete(segment)                                   # a new image
    write_csv_atomic(work / "cache" / "errors.csv", [{"image_id": "img9"}], ("image_id",))
    assert is_complete(segment)                                       # ... that segment could not read
    write_csv_atomic(work / "manifest.csv", manifest[:4], ("image_id", "sha256", "path"))
    assert not is_complete(segment)                                   # an image left the manifest
    write_csv_atomic(work / "manifest.csv", manifest, ("image_id", "sha256", "path"))
    (work / "cache" / "errors.csv").unlink()
    (work / "cache" / "cache.json").write_text('{"key": {}, "shards": ["shard-00000-of-00001-old.tfrecord"]}')
    assert not is_complete(segment) and len(read_csv(work / "cache" / "index.csv")) == 5   # index newer than plan


def test_jobs_start_and_end_with_a_fresh_process_global_state(tmp_path):
    """Starting a learner's run sets the precision policy both ways; each job runs in its own process, leaving
    this one as it was."""
    import keras
    from tensorflow.python.framework import config as tf_framework_config

    from tfflannel import tf_fused_batch_norm
    from tfflannel.config import load_config
    from tfflannel.learners.train import LearnerTask
    from tfflannel.run_info import RunInfo
    from tfflannel.training import start_run

    info = RunInfo(kind="global", fold=1, workdir="..", backbone="mobilenet_v2", input_size=32, resize=36, k=1,
                   seed=0, manifest_sha256="0" * 64)
    try:
        config = load_config(None, ["runtime.mixed_precision=true", "runtime.deterministic=true"])
        start_run(config, LearnerTask("global_learner", info, tmp_path, "mobilenet_v2"), tmp_path / "mixed")
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        assert tf_framework_config.is_op_determinism_enabled()
        assert not tf_fused_batch_norm.inference_kernel_usable()
        start_run(load_config(None), LearnerTask("global_learner", info, tmp_path, "mobilenet_v2"), tmp_path / "plain")
        assert keras.mixed_precision.global_policy().name == "float32"
        keras.mixed_precision.set_global_policy("mixed_float16")     # what a job run in this process would leak
        assert run_cli_job(Job("help", "evaluate", ("--help",), tmp_path), tmp_path / "help.log") is None
        assert keras.mixed_precision.global_policy().name == "mixed_float16", "the job ran in this process"
        assert "Usage:" in (tmp_path / "help.log").read_text()
        error = run_cli_job(Job("bad", "evaluate", ("evaluate", "--runs", str(tmp_path / "absent"),
                                                               "--out", str(tmp_path / "r")), tmp_path),
                                      tmp_path / "bad.log")
        assert error and "absent" in error, error
    finally:
        keras.mixed_precision.set_global_policy("float32")
        tf_framework_config.disable_op_determinism()
        tf_fused_batch_norm._DETERMINISTIC["on"] = False                  # the flag seed_run set with it


def test_a_stale_run_is_reported_with_the_command_that_starts_it_over(sample_work, tmp_path):
    jobs = build_jobs(sample_work, tmp_path / "runs", [1], ["mobilenet_v2"], ["global"],
                      config_args=("--set", "global_learner.epochs=1"))
    run = tmp_path / "runs" / "f1" / "global_mobilenet_v2"
    run.mkdir(parents=True)
    (run / "history.csv").write_text("epoch\n0\n")                 # made by something else
    lines = []
    states = Runner(jobs, tmp_path / "runs", wait=0, poll=0.01, echo=lines.append).run()
    assert states["train-global f1 mobilenet_v2"] == "failed" and states["evaluate"] == "blocked"
    command = f"{jobs[0].command_line()} --force"
    assert f"stale run: if the change is intended, start it over with `{command}`" in lines[0], lines[0]
    assert (run / "history.csv").read_text() == "epoch\n0\n"


# The grid, made cheap: 1 epoch, 32 px inputs, one batch per epoch, no precise-BN pass, K=1, a 256 px cache.
TINY = [a for kv in ("global_learner.epochs=1", "global_learner.crop_size=32", "global_learner.resize=36",
                     "global_learner.batch_size=16", "global_learner.precise_bn_batches=0",
                     "patched.epochs=1", "patched.patch_size=32", "patched.batch_size=16", "patched.val_patches=1",
                     "patched.images_per_batch=16", "patched.precise_bn_batches=0", "segmentation.cache_size=256",
                     "inference.k=1", "inference.images_per_batch=16", "ensemble.epochs=1",
                     "audit.bootstrap_resamples=50", "audit.gradcam=false")
        for a in ("--set", kv)]
# Two test models (the grid's property is the job graph, not the network), each traced in a second or two: test_cnn and
# test_cnn_bn (batch norm, like every real backbone). The learner killed below is test_cnn_bn (second in the list): its
# data loading, building, tracing and one epoch outlast the kill's event (its run.yaml) by seconds, so the kill lands
# before its first commit and the rerun must clear the partial run and redo it.
BACKBONES = ("test_cnn", "test_cnn_bn")
LEARNERS = [f"{mode}_{backbone}" for mode in ("patch", "global") for backbone in BACKBONES]
# Issue 15's grid has 2 folds (TFFLANNEL_GRID_FOLDS=2, several minutes on 2 cores); the suite runs 1 to stay in budget.
GRID_FOLDS = int(os.environ.get("TFFLANNEL_GRID_FOLDS", "1"))


def _reproduce(work, out, *extra):
    return [sys.executable, str(REPO / "cli.py"), "reproduce", "--data", str(work), "--out", str(out),
            "--folds", f"1-{GRID_FOLDS}", "--modes", "patch,global", "--backbones", ",".join(BACKBONES),
            "--wait", "900", *TINY, *extra]


def _state_of(output, job):
    """The state `reproduce` printed for `job` (`[i/n] STATE seconds name`)."""
    return next(line.split()[1] for line in output.splitlines() if line.endswith(f"s  {job}"))


@pytest.mark.slow
def test_shards_and_an_interrupted_run_give_the_same_table(tmp_path, sample_cls_dir):
    """Issue 15's grid (GRID_FOLDS folds x 2 tiny backbones x patch and global, 1 epoch) three ways, one table.

    `--shard 1/2` and `--shard 2/2` run concurrently on one work directory, and shard 2 is killed (kill -9)
    inside its second learner and rerun; one uninterrupted process runs the whole grid at the same time on
    a second work directory with the same manifest (its own segmentation, too). Both give the same
    table3.csv and the same predictions of every learner and ensemble. So one comparison covers both
    properties: sharding == one process, and interrupted + resumed == uninterrupted.
    """
    import shutil

    from tfflannel.data.manifest import prepare_manifest

    prepare_manifest(tmp_path / "work", folders=[sample_cls_dir], folds=2, progress=False)
    (tmp_path / "work1").mkdir()
    shutil.copy(tmp_path / "work" / "manifest.csv", tmp_path / "work1" / "manifest.csv")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def start(work, out, *extra):
        return subprocess.Popen(_reproduce(tmp_path / work, tmp_path / out, *extra), env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

    single = start("work1", "single")
    shards = [start("work", "sharded", "--shard", f"{i}/2") for i in (1, 2)]
    killed = []
    for line in shards[1].stdout:                # shard 2: its first global learner, then the second one
        killed.append(line)
        if line.rstrip().endswith("s  predict-base f1 global test_cnn"):
            # the event: train-global f1 test_cnn_bn has written its run.yaml (it trains from there on)
            started = tmp_path / "sharded" / "f1" / "global_test_cnn_bn" / "run.yaml"
            deadline = time.monotonic() + 600
            while not started.is_file() and time.monotonic() < deadline:
                assert shards[1].poll() is None, "".join(killed)
                time.sleep(0.05)
            os.killpg(shards[1].pid, signal.SIGKILL)
            break
    shards[1].wait(timeout=60)
    assert shards[1].returncode == -signal.SIGKILL, "".join(killed)
    resumed = start("work", "sharded", "--shard", "2/2")
    outputs = [p.communicate(timeout=1200)[0] for p in (single, shards[0], resumed)]
    assert [p.returncode for p in (single, shards[0], resumed)] == [0, 0, 0], outputs
    single_out, shard1_out, resumed_out = outputs
    # the rerun skipped what the killed process had finished and redid the learner it was killed in
    assert _state_of(resumed_out, "train-global f1 test_cnn") == "complete", resumed_out
    assert _state_of(resumed_out, "train-global f1 test_cnn_bn") == "done", resumed_out
    # each shard ran its own share: shard 1 the patch learners (and evaluate), shard 2 the global ones
    assert _state_of(shard1_out, f"train-patch f{GRID_FOLDS} test_cnn_bn") == "done"
    assert "train-global" not in shard1_out
    assert _state_of(resumed_out, "train-ensemble f1 patch") == "done" and "train-patch" not in resumed_out
    assert _state_of(shard1_out, "evaluate") == "done" and "evaluate" not in resumed_out
    assert _state_of(single_out, "segment") == "done" and f"all {2 + 11 * GRID_FOLDS} jobs complete" in single_out

    table = (tmp_path / "sharded" / "report" / "table3.csv").read_text()
    assert table == (tmp_path / "single" / "report" / "table3.csv").read_text()
    rows = table.splitlines()
    for run in ("patch:test_cnn", "patch:test_cnn_bn", "global:test_cnn", "global:test_cnn_bn",
                "ensemble:genet(patch:test_cnn+patch:test_cnn_bn)",
                "ensemble:genet(global:test_cnn+global:test_cnn_bn)"):
        mine = [r for r in csv.DictReader(rows) if r["run"] == run]
        assert any(r["class"] == "macro" for r in mine) and all(r["folds"] == str(GRID_FOLDS) for r in mine)
    for fold in (f"f{n}" for n in range(1, GRID_FOLDS + 1)):
        for run in (*LEARNERS, "ensemble_patched", "ensemble_global"):
            for role in (("test",) if run.startswith("ensemble") else ("train", "valid", "test")):
                path = Path(fold) / run / "predictions" / f"{role}.csv"
                assert (tmp_path / "sharded" / path).read_text() == (tmp_path / "single" / path).read_text(), path
        audits = [json.loads((tmp_path / out / "report" / f"audit_{fold}" / "audit.json").read_text())
                  for out in ("sharded", "single")]
        assert [a["learners"][0]["conditions"] for a in audits] == [audits[1]["learners"][0]["conditions"]] * 2
        assert audits[0]["ensemble"]["conditions"] == audits[1]["ensemble"]["conditions"]
        for out in ("sharded", "single"):                    # report.md carries each fold's audit
            assert f"## Does it look at the lungs? Shortcut and confound audit (audit_{fold})\n" in (
                tmp_path / out / "report" / "report.md").read_text()


def test_the_torchvision_preset_names_the_five_and_reproduce_reads_backbones_from_the_config(sample_work, tmp_path):
    from tfflannel.backbone_names import TORCHVISION_BACKBONE_NAMES
    from tfflannel.config import load_config, packaged_config

    assert load_config(packaged_config("flannel_torchvision.yaml")).study.backbones == TORCHVISION_BACKBONE_NAMES
    two = tmp_path / "two.yaml"
    two.write_text("study:\n  backbones: [mobilenet_v2, resnet50]\n")
    result = _dry_run(sample_work, tmp_path / "runs", "--config", str(two), "--weights", "none")
    assert result.exit_code == 0, result.output
    trained = {line.split("--backbone ")[1].split()[0] for line in result.output.splitlines() if "--backbone " in line}
    assert trained == {"mobilenet_v2", "resnet50"}


def test_baselines_are_rows_of_their_own_not_ensemble_members():
    jobs = build_jobs("work", "runs", [1, 2], ["mobilenet_v2", "resnet50"], ["patch", "global"],
                      baselines=["covidnet_cxr", "efficientnet_b4"])
    kinds = [j.kind for j in jobs]
    assert kinds.count("train") == kinds.count("predict") == 2 * 4 * 2 and kinds.count("ensemble") == 4
    for ensemble in (j for j in jobs if j.kind == "ensemble"):
        members = ensemble.args[ensemble.args.index("--runs") + 1]
        assert "covidnet" not in members and "efficientnet" not in members
        assert not any("covidnet" in n or "efficientnet" in n for n in ensemble.needs)
    evaluate = next(j for j in jobs if j.kind == "evaluate")
    runs = evaluate.args[evaluate.args.index("--runs") + 1].split(",")
    audit = jobs[-1]                          # the baselines are audited beside the ensemble members
    audited = audit.args[audit.args.index("--runs") + 1]
    assert audit.kind == "audit" and str(Path("runs/f2/global_covidnet_cxr")) in audited
    for fold in (1, 2):                       # same folds, both modes, one row each beside the ensembles
        for mode in ("patch", "global"):
            for name in ("covidnet_cxr", "efficientnet_b4"):
                assert str(Path(f"runs/f{fold}/{mode}_{name}")) in runs
                assert f"predict-base f{fold} {mode} {name}" in evaluate.needs
    assert runs[-4:] == [str(Path(f"runs/f{f}/ensemble_{m}")) for f in (1, 2) for m in ("global", "patched")]
    with pytest.raises(reproduce.InputError, match="either an ensemble member or a baseline"):
        build_jobs("work", "runs", [1], ["mobilenet_v2"], ["global"], baselines=["mobilenet_v2"])


def test_baselines_preset_and_scratch_weights(sample_work, tmp_path):
    weights = tmp_path / "w"
    weights.mkdir()
    for name in ("densenet161", "inception_v3_tv", "resnet152_tv", "resnext101_32x8d", "vgg19_bn"):
        _write_weights_stub(weights / f"{name}.weights.h5")
    _write_weights_stub(weights / "efficientnet_b4.h5")              # Keras' own ImageNet file, renamed
    result = _dry_run(sample_work, tmp_path / "runs", "--config", str(REPO / "configs" / "baselines.yaml"),
                      "--weights-dir", str(weights))
    assert result.exit_code == 0, result.output
    given = _weights_of(result.output.splitlines())
    assert given["covidnet_cxr"] == "none"                          # no ImageNet weights anywhere: from scratch
    assert given["efficientnet_b4"] == str(weights / "efficientnet_b4.h5")
    assert given["vgg19_bn"] == str(weights / "vgg19_bn.weights.h5") and len(given) == 7
    ensemble = next(line for line in result.output.splitlines() if " train-ensemble " in line)
    assert "covidnet" not in ensemble and "vgg19_bn" in ensemble
    none = _dry_run(sample_work, tmp_path / "runs", "--config", str(REPO / "configs" / "baselines.yaml"),
                    "--baselines", "none", "--backbones", "mobilenet_v2")
    assert none.exit_code == 0 and list(_weights_of(none.output.splitlines())) == ["mobilenet_v2"]
    assert _weights_of(_dry_run(sample_work, tmp_path / "runs", "--backbones", "mobilenet_v2", "--baselines",
                                "covidnet_cxr", "--weights", "imagenet").output.splitlines()) == {
        "mobilenet_v2": "imagenet", "covidnet_cxr": "none"}
