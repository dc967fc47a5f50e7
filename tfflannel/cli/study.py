"""Whole-study commands: `demo` (the bundled sample) and `reproduce` (the paper's grid)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tfflannel import DISCLAIMER
from tfflannel.backbone_names import BACKBONE_NAMES
from tfflannel.cli.common import check_fold, config_options, load_cli_config, parse_shard, reports_input_errors


@click.command("demo")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Where everything goes.")
@config_options("configs/demo.yaml")
@reports_input_errors
def demo_command(out, config_path, overrides):
    """The whole pipeline on the bundled real sample in a few minutes on a CPU (a demo, not a result)."""
    from tfflannel.demo import run_demo

    config = load_cli_config(config_path, overrides, "configs/demo.yaml")
    report = run_demo(config, out)
    click.echo(DISCLAIMER)
    click.echo(f"open {report}")


@click.command("reproduce")
@click.option("--data", required=True, type=click.Path(file_okay=False, exists=True),
              help="Work directory of prepare-data (manifest.csv).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Runs directory: OUT/f<fold>/<mode>_<backbone>, OUT/f<fold>/ensemble_*, OUT/report.")
@click.option("--folds", default="1-5", show_default=True, help="Validation folds, e.g. 1-5 or 1,3.")
@click.option("--backbones", help="Comma-separated backbones  [default: study.backbones of the config: the paper's "
              "five, torchvision layout].")
@click.option("--baselines", help="Comma-separated learners trained and evaluated on the same folds beside the "
              "ensembles, not ensemble members, or none  [default: study.baselines of the config: none; "
              "configs/baselines.yaml: covidnet_cxr,efficientnet_b4].")
@click.option("--modes", default="patch,global", show_default=True,
              help="patch (Patched FLANNEL) and/or global (original FLANNEL).")
@click.option("--weights", help="--weights of train-patch/train-global: none (default) | imagenet (only backbones with "
              "Keras ImageNet weights, not the default five) | PATH (one backbone only).")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="One weights file per backbone: DIR/<backbone>.weights.h5 (from import-weights), else "
              ".safetensors, else .pth, else .h5 (Keras' own file); all are checked before any job runs; "
              "backbones without ImageNet weights anywhere (covidnet_cxr) train from scratch.")
@click.option("--shard", default="1/1", show_default=True, help="Run only part I of N of the grid (N hosts share it).")
@click.option("--wait", default=86400.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to wait for inputs that other shards make before reporting them missing.")
@click.option("--dry-run", is_flag=True,
              help="Print this shard's jobs as command lines in dependency order, run nothing.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="YAML config passed to every command  [default: each command's own].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Config override passed to every command (repeatable).")
@reports_input_errors
def reproduce_command(data, out, folds, backbones, baselines, modes, weights, weights_dir, shard, wait, dry_run,
                      config_path, overrides):
    """The whole study: segment -> train-patch/train-global -> predict-base -> train-ensemble per fold -> evaluate.

    Runs what is not complete, skips what is, resumes what was cut off; rerun the same command after a failure.
    A run made with other settings is not overwritten: its job fails with the exact command (with --force)
    that starts it over.
    """
    from tfflannel import job_runner, reproduce

    part = parse_shard(shard)
    if backbones is None or baselines is None:
        study = load_cli_config(config_path, overrides).study
        backbones = ",".join(study.backbones) if backbones is None else backbones
        baselines = ",".join(study.baselines) if baselines is None else baselines
    baselines = [] if baselines.strip() in ("", "none") else reproduce.parse_names(baselines, BACKBONE_NAMES,
                                                                                   "--baselines")
    config_args = (("--config", config_path) if config_path else ()) + tuple(a for o in overrides for a in ("--set", o))
    jobs = reproduce.build_jobs(data, out, reproduce.parse_folds(folds),
                                reproduce.check_names(reproduce.parse_names(backbones, BACKBONE_NAMES, "--backbones")),
                                reproduce.parse_names(modes, reproduce.MODES, "--modes"), weights, config_args, part,
                                weights_dir=weights_dir, baselines=baselines)
    for fold in reproduce.parse_folds(folds):
        check_fold(data, fold)
    mine = reproduce.shard_jobs(jobs, part)
    if dry_run:
        program = job_runner.main_program()
        for job in mine:
            click.echo(job.command_line(program))
        return
    click.echo(f"shard {part[0]}/{part[1]}: {len(mine)} of {len(jobs)} jobs ({reproduce.describe_plan(jobs, part)}); "
               f"logs -> {Path(out) / 'logs'}")
    states = job_runner.Runner(jobs, out, part, wait=wait, echo=click.echo).run()
    bad = {name: state for name, state in states.items() if state not in ("done", "complete")}
    if bad:
        click.echo(f"{len(bad)} job(s) not complete: {', '.join(f'{n} ({s})' for n, s in bad.items())}; "
                   "fix and rerun the same command", err=True)
        sys.exit(1)
    click.echo(f"all {len(states)} jobs complete" + (f"; Table 3 -> {Path(out) / 'report' / 'table3.md'}"
                                                     if any(j.kind == "evaluate" for j in mine) else ""))


COMMANDS = (demo_command, reproduce_command)
