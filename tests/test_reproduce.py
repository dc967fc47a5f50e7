"""`reproduce`: the job graph, shards, dry-run lines, locks; a real grid on the bundled sample (slow)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tfflannel import reproduce
from tfflannel.reproduce import Job, Runner, build_jobs, is_complete, job_lock, parse_folds, shard_jobs

REPO = Path(__file__).resolve().parents[1]


def _grid(parts=1, part=1, modes=("patch", "global")):
    return build_jobs("work", "runs", [1, 2], ["mobilenet_v2", "resnet50"], list(modes), shard=(part, parts))


def test_grid_counts_and_dependency_order():
    jobs = _grid()
    kinds = [j.kind for j in jobs]
    # 1 segment + 2 folds x 2 backbones x 2 modes x (train + predict) + 2 x 2 ensembles + evaluate
    assert kinds.count("segment") == 1 and kinds.count("train") == 8 and kinds.count("predict") == 8
    assert kinds.count("ensemble") == 4 and kinds == [*kinds[:-1], "evaluate"]
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
    assert len(lines) == 22 and not (tmp_path / "runs").exists()
    assert [line.split()[1] for line in lines[:3]] == ["segment", "train-patch", "predict-base"]
    assert lines[-1].split()[1] == "evaluate" and all("--set patched.epochs=1" in line for line in lines[:-1])
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


TINY = ["--set", "global_learner.epochs=1", "--set", "global_learner.crop_size=32", "--set", "global_learner.resize=36",
        "--set", "global_learner.batch_size=8", "--set", "ensemble.epochs=2"]


def _reproduce(work, out, *extra):
    return [sys.executable, str(REPO / "cli.py"), "reproduce", "--data", str(work), "--out", str(out), "--folds", "1",
            "--modes", "global", "--backbones", "mobilenet_v2,resnet50", "--wait", "600", *TINY, *extra]


@pytest.mark.slow
def test_shards_and_an_interrupted_run_give_the_same_table(tmp_path, sample_cls_dir):
    """Two shards run concurrently == one process killed (kill -9) in its second learner and rerun.

    Kept to one fold and the global mode (no segmentation) so that it fits the CI budget on 2 cores;
    the fold's ensemble on shard 1 waits for the learner that shard 2 trains.
    """
    from tfflannel.data.manifest import prepare_manifest

    work = tmp_path / "work"
    prepare_manifest(work, folders=[sample_cls_dir], folds=2, progress=False)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    shards = [subprocess.Popen(_reproduce(work, tmp_path / "sharded", "--shard", f"{i}/2"), env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in (1, 2)]
    outputs = [p.communicate(timeout=900)[0] for p in shards]
    assert [p.returncode for p in shards] == [0, 0], outputs
    assert "train-ensemble f1 global" in outputs[0] and "train-global f1 resnet50" in outputs[1]

    single = subprocess.Popen(_reproduce(work, tmp_path / "single"), env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    lines = []
    for line in single.stdout:
        lines.append(line)
        if "predict-base f1 global mobilenet_v2" in line:
            time.sleep(3)                       # inside the second learner's training
            os.killpg(single.pid, signal.SIGKILL)
            break
    single.wait(timeout=60)
    assert single.returncode == -signal.SIGKILL and not (tmp_path / "single" / "report").exists(), lines
    resumed = subprocess.run(_reproduce(work, tmp_path / "single"), env=env, text=True, capture_output=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "complete" in resumed.stdout.split("train-global f1 mobilenet_v2")[0].splitlines()[-1]
    table = (tmp_path / "sharded" / "report" / "table3.csv").read_text()
    assert table == (tmp_path / "single" / "report" / "table3.csv").read_text() and "ensemble" in table
    for run in ("global_mobilenet_v2", "global_resnet50", "ensemble_global"):
        assert ((tmp_path / "sharded" / "f1" / run / "predictions" / "test.csv").read_text()
                == (tmp_path / "single" / "f1" / run / "predictions" / "test.csv").read_text()), run
