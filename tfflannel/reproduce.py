"""`reproduce`: the paper's whole grid (folds x backbones x {patched, global}) as one resumable command.

The job graph, in dependency order:

    segment -> train-patch / train-global -> predict-base   (one learner per fold, backbone and mode)
            -> train-ensemble (one per fold and mode, over that fold's learners) -> evaluate
            -> audit (one per fold: that fold's learners and its patched ensemble, on the test partition)

Every job is a `tfflannel` command line, run as its own process (`python -m tfflannel ARGS`, the lines
`--dry-run` prints for any scheduler). Each command resumes and skips on its own (train runs resume per
epoch; a complete run, up-to-date predictions or a complete cache return at once; a run made with other
settings stops with a clear error), so rerunning `reproduce` after a failure or a kill finishes the grid.

`--shard I/N` lets N processes (a Slurm array, Kubernetes indexed Jobs, N shells) share the grid: shard I
runs its part of the segmentation cache and every N-th learner and ensemble; shard 1 also evaluates and audits. A job
whose inputs another shard makes waits for them (up to `--wait` seconds) or reports them missing. One
lock file per job (`fcntl.flock`, released by the OS if the process dies) keeps two processes from
running one job. Each command's output goes to RUNS/logs/<job>.log; the console gets one line per job.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

from tfflannel.backbone_names import BACKBONE_NAMES, SCRATCH_BACKBONE_NAMES, TORCHVISION_BACKBONE_NAMES
from tfflannel.errors import InputError
from tfflannel.models.weights_files import check_weights_file

PAPER_BACKBONES = TORCHVISION_BACKBONE_NAMES      # the paper's five, defined once in backbone_names
WEIGHT_SUFFIXES = (".weights.h5", ".safetensors", ".pth", ".h5")
"""What `--weights-dir DIR` looks for, in this order: the first of DIR/<backbone><suffix> that exists is used
(`.h5`: Keras' own ImageNet file, e.g. `efficientnetb4_notop.h5` saved as `DIR/efficientnet_b4.h5`)."""
MODES = ("patch", "global")
ENSEMBLE_NAMES = {"patch": "ensemble_patched", "global": "ensemble_global"}


@dataclasses.dataclass(frozen=True)
class Job:
    """One command of the grid.

    Args:
        name: str. Unique, readable id (`train-patch f1 densenet161`), also the lock and log file name.
        kind: str. `segment`, `train`, `predict`, `ensemble`, `evaluate` or `audit`.
        args: tuple of str. The command line after the program name.
        target: Path. The directory the job writes (cache, run or report).
        needs: tuple of str. Names of the jobs whose outputs it reads.
        shard: int. 0-based index of the shard that runs it; `None`: every shard runs its own part.
    """

    name: str
    kind: str
    args: tuple
    target: Path
    needs: tuple = ()
    shard: int | None = 0

    @property
    def slug(self):
        """The name as a file name."""
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)

    def command_line(self, program="tfflannel"):
        """The job as one shell-quoted command line."""
        return f"{program} {shlex.join(self.args)}"


def parse_folds(text):
    """`1-5`, `1,3` or `2` -> sorted list of ints.

    Raises:
        InputError: not a list of positive ints and ranges.
    """
    folds = set()
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or int(match.group(1)) < 1 or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise InputError(f"--folds: expected folds such as 1-5 or 1,3. Received: {text!r}.")
        folds.update(range(int(match.group(1)), int(match.group(2) or match.group(1)) + 1))
    return sorted(folds)


def parse_names(text, allowed, option):
    """Comma-separated names, each one of `allowed`, in the given order without repeats.

    Raises:
        InputError: an unknown or repeated name.
    """
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names or len(set(names)) != len(names):
        raise InputError(f"{option}: expected distinct names from {list(allowed)}. Received: {text!r}.")
    return names


def _weights_in_directory(backbones, weights_dir):
    """{backbone: its weights file in `weights_dir`}, each checked (`resolve_weights`'s `--weights-dir`).

    Raises:
        InputError: not a directory; backbones without a file (all listed at once); a truncated or corrupt file.
    """
    directory = Path(weights_dir)
    if not directory.is_dir():
        raise InputError(f"--weights-dir {weights_dir}: not a directory.")
    found, missing = {}, []
    for backbone in backbones:
        files = [directory / f"{backbone}{suffix}" for suffix in WEIGHT_SUFFIXES]
        hit = next((f for f in files if f.is_file()), None)
        if hit is None:
            missing.append(str(directory / f"{backbone}.weights.h5"))
        found[backbone] = str(hit)
    if missing:
        raise InputError(f"--weights-dir {weights_dir}: no weights for {len(missing)} backbone(s): "
                         f"{', '.join(missing)} (nor .safetensors/.pth of the same name); make each with "
                         f"`tfflannel import-weights --backbone NAME --from TORCHVISION_FILE --out "
                         f"{directory}/NAME.weights.h5`.")
    for path in found.values():
        check_weights_file(path)
    return found


def resolve_weights(backbones, weights="none", weights_dir=None):
    """The `--weights` value of each backbone's training jobs, checked before any job runs.

    Args:
        backbones: list of str. Registered backbone names.
        weights: str. `none`, `imagenet` (Keras' own ImageNet weights) or one file (only for one backbone).
            Defaults to `none`.
        weights_dir: str or Path. A directory holding one file per backbone: the first of
            DIR/<backbone>.weights.h5 (what `import-weights` writes), .safetensors, .pth that exists.
            Defaults to `None` (use `weights`).

    Returns:
        dict. {backbone: `--weights` value}. Backbones that have no ImageNet weights anywhere
        (`SCRATCH_BACKBONE_NAMES`: COVID-Net) get `none` with `--weights imagenet` or `--weights-dir`.

    Raises:
        InputError: `--weights` and `--weights-dir` both given; a weights file for several backbones; a missing
            file (all backbones' missing files are listed at once); a truncated or corrupt file
            (`check_weights_file`); `imagenet` for backbones without Keras ImageNet
            weights (all named, with the fix).
    """
    weights = "none" if weights in (None, "None") else str(weights)
    scratch = [b for b in backbones if b in SCRATCH_BACKBONE_NAMES]
    if scratch and (weights_dir is not None or weights == "imagenet"):
        found = resolve_weights([b for b in backbones if b not in scratch], weights, weights_dir) if len(
            scratch) < len(backbones) else {}
        return {b: found.get(b, "none") for b in backbones}
    if weights_dir is not None:
        if weights != "none":
            raise InputError(f"--weights {weights} and --weights-dir {weights_dir}: give one of them.")
        return _weights_in_directory(backbones, weights_dir)
    if weights not in ("none", "imagenet"):
        if len(backbones) > 1:
            raise InputError(f"--weights {weights}: one weights file cannot fit {len(backbones)} backbones; put "
                             f"one file per backbone in a directory (DIR/<backbone>.weights.h5) and pass "
                             f"--weights-dir DIR.")
        if not Path(weights).is_file():
            raise InputError(f"--weights {weights}: weights file not found.")
        check_weights_file(weights)
    if weights == "imagenet":
        from tfflannel.models.backbones import backbone_config

        without = [b for b in backbones if not backbone_config(b).keras_weights]
        if without:
            raise InputError(f"--weights imagenet: Keras has no ImageNet weights for {', '.join(without)}. Convert "
                             f"torchvision's ImageNet files once with `tfflannel import-weights --backbone NAME --from "
                             f"FILE.pth|FILE.safetensors --out w/NAME.weights.h5` and pass --weights-dir w (or "
                             f"--weights none).")
    return dict.fromkeys(backbones, weights)


def build_jobs(data, out, folds, backbones=PAPER_BACKBONES, modes=MODES, weights="none", config_args=(),
               shard=(1, 1), weights_dir=None, baselines=()):
    """The grid's jobs in dependency order, each assigned to a shard.

    Baselines are learners trained, predicted and evaluated on the same folds and films as the ensemble's
    members, but not members: each is a Table-3 row of its own beside FLANNEL and Patched FLANNEL.

    Args:
        data: str or Path. Work directory of prepare-data (manifest.csv).
        out: str or Path. Where runs go: OUT/f<fold>/<mode>_<backbone>, OUT/f<fold>/ensemble_{patched,global},
            OUT/report, OUT/report/audit_f<fold>.
        folds: list of int. Validation folds.
        backbones: list of str. Registered backbone names. Defaults to the paper's five.
        modes: list of str. `patch` and/or `global`. Defaults to both.
        weights: str. `--weights` of the training commands: `none`, `imagenet` or one file (one backbone only).
            Defaults to `none`.
        config_args: tuple of str. `--config FILE` / `--set KEY=VALUE` passed to every configurable command.
        shard: (I, N). This process's shard; only used for the segment job's own `--shard I/N`.
        weights_dir: str or Path. One weights file per backbone (see `resolve_weights`). Defaults to `None`.
        baselines: list of str. Registered backbones trained in every mode and fold but left out of the
            ensembles (`configs/baselines.yaml`: COVID-Net and EfficientNet-B4). Defaults to none.

    Returns:
        list of Job.

    Raises:
        InputError: weights that cannot work (see `resolve_weights`), or a backbone named both as an ensemble
            member and a baseline, before any job exists.
    """
    both = sorted(set(backbones) & set(baselines))
    if both:
        raise InputError(f"--baselines: {', '.join(both)} also in --backbones; a learner is either an ensemble "
                         f"member or a baseline.")
    per_backbone = resolve_weights([*backbones, *baselines], weights, weights_dir)
    data, out, config_args = str(data), Path(out), tuple(config_args)
    part, parts = shard
    jobs = []
    if "patch" in modes:
        segment_args = ("segment", "--data", data) + (("--shard", f"{part}/{parts}") if parts > 1 else ())
        jobs.append(Job("segment", "segment", segment_args + config_args, Path(data) / "cache", shard=None))
    learner_jobs, learners, standalone = _learner_jobs(folds, backbones, baselines, modes, data, out, per_backbone,
                                                       config_args, parts)
    jobs += learner_jobs
    ensembles = _ensemble_jobs(learners, out, config_args, parts)
    jobs += ensembles
    run_dirs = ([str(p.target) for group in learners.values() for p in group] + [str(p.target) for p in standalone]
                + [str(e.target) for e in ensembles])
    jobs.append(Job("evaluate", "evaluate", ("evaluate", "--runs", ",".join(run_dirs), "--out", str(out / "report")),
                    out / "report", tuple(j.name for j in jobs if j.kind in ("predict", "ensemble")), 0))
    jobs += _audit_jobs(folds, modes, learners, standalone, ensembles, data, out, config_args)
    return jobs


def _learner_jobs(folds, backbones, baselines, modes, data, out, per_backbone, config_args, parts):
    """The train and predict-base jobs of every fold, backbone and mode, shards assigned round-robin.

    Returns:
        (list of Job, {(fold, mode): [ensemble members' predict jobs]}, [baselines' predict jobs]).
    """
    jobs, learners, standalone, unit = [], {}, [], 0
    for fold in folds:
        for backbone in [*backbones, *baselines]:
            for mode in modes:
                run = out / f"f{fold}" / f"{mode}_{backbone}"
                train = Job(f"train-{mode} f{fold} {backbone}", "train",
                            (f"train-{mode}", "--backbone", backbone, "--fold", str(fold), "--data", data,
                             "--out", str(run), "--weights", per_backbone[backbone]) + config_args,
                            run, ("segment",) if mode == "patch" else (), unit % parts)
                predict = Job(f"predict-base f{fold} {mode} {backbone}", "predict",
                              ("predict-base", "--run", str(run), "--data", data) + config_args,
                              run, (train.name,), unit % parts)
                jobs += [train, predict]
                if backbone in baselines:
                    standalone.append(predict)
                else:
                    learners.setdefault((fold, mode), []).append(predict)
                unit += 1
    return jobs, learners, standalone


def _ensemble_jobs(learners, out, config_args, parts):
    """One train-ensemble job per (fold, mode) over its members' predictions, shards assigned round-robin."""
    ensembles = []
    for index, ((fold, mode), predicts) in enumerate(sorted(learners.items())):
        target = out / f"f{fold}" / ENSEMBLE_NAMES[mode]
        runs = ",".join(str(p.target) for p in predicts)
        ensembles.append(Job(f"train-ensemble f{fold} {mode}", "ensemble",
                             ("train-ensemble", "--fold", str(fold), "--runs", runs, "--out", str(target))
                             + config_args,
                             target, tuple(p.name for p in predicts), index % parts))
    return ensembles


def _audit_jobs(folds, modes, learners, standalone, ensembles, data, out, config_args):
    """One audit job per fold (its learners, baselines and ensemble), after evaluate, on shard 1."""
    jobs = []
    for fold in folds:
        members = [str(p.target) for mode in modes for p in learners[(fold, mode)]]
        members += [str(p.target) for p in standalone if Path(p.target).parent.name == f"f{fold}"]
        ensemble = next(e for mode in modes for e in ensembles if e.name == f"train-ensemble f{fold} {mode}")
        jobs.append(Job(f"audit f{fold}", "audit",
                        ("audit", "--runs", ",".join(members), "--ensemble", str(ensemble.target), "--data", data,
                         "--out", str(out / "report" / f"audit_f{fold}"), "--report", str(out / "report" / "report.md"))
                        + config_args,
                        out / "report" / f"audit_f{fold}", ("evaluate",), 0))
    return jobs


def check_names(backbones):
    """Every backbone must be registered (checked before any work)."""
    return parse_names(",".join(backbones), BACKBONE_NAMES, "--backbones")


def describe_plan(jobs, shard):
    """`N jobs (...)` summary line for the jobs of one shard."""
    counts = {}
    for job in jobs:
        if job.shard is None or job.shard == shard[0] - 1:
            counts[job.kind] = counts.get(job.kind, 0) + 1
    return ", ".join(f"{count} {kind}" for kind, count in counts.items())


def shard_jobs(jobs, shard):
    """The jobs that shard (I, N) runs, in dependency order."""
    return [j for j in jobs if j.shard is None or j.shard == shard[0] - 1]
