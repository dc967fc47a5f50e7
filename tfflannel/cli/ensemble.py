"""Ensemble and evaluation commands: `train-ensemble`, `evaluate`, `audit`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tfflannel import DISCLAIMER
from tfflannel.cli.common import config_options, load_cli_config, reports_input_errors, run_list


@click.command("train-ensemble")
@click.option("--fold", type=click.IntRange(min=1), help="Fold of the runs (checked against their run.yaml).")
@click.option("--runs", "run_dirs", required=True, multiple=True,
              help="Base-learner run directories with predictions/ (repeat --runs, or separate with commas).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Ensemble run directory.")
@click.option("--fit-on", type=click.Choice(["valid", "train"]),
              help="valid: out-of-fold predictions (default); train: in-sample, as the original.")
@click.option("--force", is_flag=True,
              help="Start over even if --out holds a complete run or one made with other settings.")
@config_options("configs/ensemble.yaml")
@reports_input_errors
def train_ensemble_command(fold, run_dirs, out, fit_on, force, config_path, overrides):
    """Fit the FLANNEL neural weight module with a focal loss on predictions joined by image_id."""
    from tfflannel.ensemble.train import train_ensemble

    config = load_cli_config(config_path, overrides, "configs/ensemble.yaml")
    if fit_on:
        config.ensemble.fit_on = fit_on
    summary = train_ensemble(config, run_list(run_dirs), out, fold, force=force, echo=click.echo)
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"model -> {Path(out) / 'model.keras'}; test predictions -> {Path(out) / 'predictions' / 'test.csv'}")


@click.command("evaluate")
@click.option("--runs", "run_dirs", required=True, multiple=True,
              help="Run directories (base learners and ensembles, any folds; repeat --runs, or separate with commas).")
@click.option("--out", default="report", show_default=True, type=click.Path(file_okay=False), help="Output directory.")
@reports_input_errors
def evaluate_command(run_dirs, out):
    """F1, macro-F1, accuracy with 95 % intervals, Table 3, calibration, curves and report.md.

    Patient-bootstrap intervals, calibration (ECE, Brier, NLL, reliability diagrams; an ensemble's
    temperature applied), confusion matrices, PR/ROC curves.
    """
    from tfflannel.evaluation.report import evaluate_runs

    evaluate_runs(run_list(run_dirs), out)
    click.echo((Path(out) / "table3.md").read_text())
    click.echo(f"report -> {Path(out) / 'report.md'}")
    click.echo(DISCLAIMER)


@click.command("audit")
@click.option("--runs", "run_dirs", required=True, multiple=True,
              help="Base-learner runs to audit (repeat --runs, or separate with commas).")
@click.option("--ensemble", "ensemble_dir", type=click.Path(exists=True, file_okay=False),
              help="A train-ensemble run over (some of) --runs: audited on its learners' scores of each input.")
@click.option("--data", "workdir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Work directory (manifest.csv, cache/) whose test partition is audited.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory for audit.json, audit.md and plots/.")
@click.option("--seg", "seg_path", type=click.Path(exists=True),
              help="Segmenter the runs were trained with (run dir, .keras or .json)  [default: the shipped one].")
@click.option("--report", "report_md", type=click.Path(exists=True, dir_okay=False),
              help="An evaluate report.md to add the audit to, as a section titled with --out's folder name.")
@config_options(None)
@reports_input_errors
def audit_command(run_dirs, ensemble_dir, workdir, out, seg_path, report_md, config_path, overrides):
    """Does it look at the lungs? A shortcut and confound audit on the test partition.

    Scores on normal, lungs_only and lungs_removed input, lung attention, a source/view/age probe on the
    features, per-stratum metrics and a per-class shortcut verdict (thresholds: audit.*).
    """
    from tfflannel.audit.run import audit_runs
    from tfflannel.segmentation.inference import load_segmenter

    config = load_cli_config(config_path, overrides)
    result = audit_runs(run_list(run_dirs), workdir, out, config, ensemble_dir,
                        load_segmenter(seg_path) if seg_path else None)
    for learner in result["learners"]:
        click.echo(f"{learner['run']}: shortcut classes {learner['shortcut_classes'] or 'none'}")
    click.echo(f"audit -> {Path(out) / 'audit.json'}, {Path(out) / 'audit.md'}")
    if report_md:
        from tfflannel.audit.report import append_audit_section

        click.echo(f"audit section -> {append_audit_section(report_md, Path(out) / 'audit.md', Path(out).name)}")
    click.echo(DISCLAIMER)


COMMANDS = (train_ensemble_command, evaluate_command, audit_command)
