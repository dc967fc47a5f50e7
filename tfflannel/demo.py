"""`demo`: the whole pipeline on the bundled real sample, as a small `reproduce` grid.

prepare-data -> the study grid on one fold (`reproduce.build_jobs`, each job its own process: segment with the
shipped lung segmenter -> train-patch and train-global for each demo backbone -> predict-base -> train-ensemble,
patched and original FLANNEL -> evaluate -> audit) -> export + predict + Grad-CAM. A demonstration on 40 images,
not a result.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import click

from tfflannel.errors import InputError


class _Stages:
    """Prints each stage's title with the time since the demo started, and the total at the end."""

    def __init__(self):
        self.started = time.time()

    def __call__(self, title):
        click.secho(f"\n== {title}  [{time.time() - self.started:.0f} s]", bold=True)
        return time.time()

    def total(self):
        return time.time() - self.started


def _ensemble_line(name, run_dir):
    """One line saying what an ensemble learned: its mean learner weights and the spread of its test outputs."""
    from tfflannel.predictions import read_predictions

    summary = json.loads((run_dir / "learner_weights.json").read_text())
    probabilities = read_predictions(run_dir, "test").scores("prob")
    learned = summary.get("mean_weight_on_test", {})
    weights = ", ".join(f"{learner} {weight:+.2f}" for learner, weight in learned.items())
    return (f"{name}: mean learner weights {weights or 'none (mlp)'}; test outputs {probabilities.min():.3f}-"
            f"{probabilities.max():.3f} (std over films {probabilities.std(axis=0).mean():.3f}), "
            f"temperature {summary['temperature']:.3f}")


def _run_grid(config, work, out):
    """The study grid on `config.demo`'s fold and backbones, every job its own process; returns the jobs.

    Every job reads one config file, `OUT/config.yaml`: the demo's validated config with the demo's epochs. The
    grid runs as `demo.shards` shards at once, one thread each, as `reproduce --shard I/N` on N hosts would: a job
    whose inputs another shard makes waits for them.

    Raises:
        InputError: a job did not complete (its log named).
    """
    from concurrent.futures import ThreadPoolExecutor

    from tfflannel.config import dump_config
    from tfflannel.job_runner import Runner
    from tfflannel.reproduce import build_jobs

    demo, parts = config.demo, config.demo.shards
    config.patched.epochs, config.global_learner.epochs = demo.patch_epochs, demo.global_epochs
    dump_config(config, out / "config.yaml")

    for marker in (out / ".jobs").glob("*.failed"):     # a failure of an earlier attempt is not this one's
        marker.unlink()
    runners = []
    for part in range(1, parts + 1):
        jobs = build_jobs(work, out, [demo.fold], demo.backbones, config_args=("--config", str(out / "config.yaml")),
                          shard=(part, parts))
        prefix = f"shard {part}/{parts} " if parts > 1 else ""
        runners.append(Runner(jobs, out, (part, parts), poll=0.5, echo=lambda line, p=prefix: click.echo(p + line)))
    click.echo(f"{parts} shard(s) at once; each job's output -> {out / 'logs'}/<job>.log")
    with ThreadPoolExecutor(parts) as pool:
        futures = [pool.submit(runner.run) for runner in runners]
        try:
            results = [future.result() for future in futures]
        except KeyboardInterrupt:                 # Ctrl-C: no shard starts another job
            for runner in runners:
                runner.stop.set()
            raise
    bad = {name: state for states in results for name, state in states.items() if state not in ("done", "complete")}
    if bad:
        raise InputError(f"demo: {len(bad)} job(s) did not complete ({', '.join(f'{n}: {s}' for n, s in bad.items())}"
                         f"); their logs are in {out / 'logs'}")
    return runners[0].jobs


def _summarise(jobs, out):
    """What the grid made: the ensembles' learner weights, Table 3 and the audit's verdicts."""
    for job in jobs:
        if job.kind == "ensemble":
            click.echo(_ensemble_line(job.target.name, job.target))
        if job.kind == "evaluate":
            click.echo((job.target / "table3.md").read_text())
        if job.kind == "audit":
            audit = json.loads((job.target / "audit.json").read_text())
            for learner in audit["learners"]:
                click.echo(f"{learner['run']}: lung attention {learner['lung_attention']}, shortcut classes "
                           f"{learner['shortcut_classes'] or 'none'}")
            click.echo(f"audit -> {job.target / 'audit.md'} (appended to {out / 'report' / 'report.md'})")


def _export_and_predict(config, patch_runs, ensemble, out, test_files):
    """Export the patched pipeline, predict test films with the SavedModel and draw a patch Grad-CAM.

    The export is the `export` command in its own process, as the grid's jobs (nothing but that command imports
    `tfflannel.export`); prediction is `serving.predict`, what `predict --model` runs.
    """
    from tfflannel.data.io import read_image
    from tfflannel.explain.gradcam import explain_image, save_explanation
    from tfflannel.film_pipeline import ViewSettings
    from tfflannel.job_runner import run_cli_job
    from tfflannel.reproduce import Job
    from tfflannel.serving.predict import load_exported, predict_files

    shutil.rmtree(out / "export", ignore_errors=True)
    export = Job("export", "export", ("export", "--runs", ",".join(map(str, patch_runs)), "--ensemble", str(ensemble),
                                      "--out", str(out / "export"), "--config", str(out / "config.yaml")),
                 out / "export")
    error = run_cli_job(export, out / "logs" / "export.log")
    if error:
        raise InputError(f"demo: `{export.command_line()}` failed: {error}; log: {out / 'logs' / 'export.log'}")
    records, _ = predict_files(load_exported(out / "export"), test_files)
    click.echo(f"SavedModel -> {out / 'export' / '1'}; predict --model on {len(records)} test films:")
    click.echo(json.dumps(records[:2], indent=2))
    explained = save_explanation(explain_image(read_image(test_files[0])[0], patch_runs[-1], k=config.inference.k,
                                               seed=config.inference.seed, view=ViewSettings.from_config(config)),
                                 out / "report" / "gradcam.png")
    click.echo(f"probabilistic patch Grad-CAM of {Path(test_files[0]).name} -> {explained}")


def run_demo(config, out_dir):
    """Run every stage on `tfflannel/sample/cls` into `out_dir`, printing each stage's progress.

    Writes `work/` (manifest, segment cache), `config.yaml` (what every job read), the grid's runs
    (`f<fold>/{patch,global}_<backbone>`, `f<fold>/ensemble_{patched,global}`: one patch and one global learner per
    `config.demo.backbones` on fold `config.demo.fold`, and the two ensembles), `report/` (metrics, table3.md,
    report.md with the audit, `audit_f<fold>/`, a Grad-CAM figure), `logs/` (one per job) and `export/` (the
    SavedModel, replaced if present), then classifies up to 4 test-split films with the export. Rerun, it skips
    what is complete and resumes what was cut off, as `reproduce` does.

    Args:
        config: ExperimentConfig. Validated config; `config.demo` picks backbones, fold and
            epochs. Modified in place: `patched.epochs` and `global_learner.epochs` are set to
            `demo.patch_epochs` and `demo.global_epochs`.
        out_dir: str or `pathlib.Path`. Output folder, created if needed.

    Returns:
        pathlib.Path. `out_dir/report/report.md`.

    Raises:
        InputError: a job of the grid did not complete.
    """
    from tfflannel.data.manifest import prepare_manifest
    from tfflannel.sample import CLS_DIR

    out = Path(out_dir)
    work, fold = out / "work", config.demo.fold
    stage = _Stages()
    stage("1/3 prepare-data on the bundled sample")
    rows = prepare_manifest(work, folders=[CLS_DIR], seed=config.data.seed, folds=config.data.folds,
                            test_size=config.data.test_size, max_distance=config.data.link_max_distance,
                            min_correlation=config.data.link_min_correlation)
    click.echo(f"{len(rows)} images -> {work / 'manifest.csv'}")
    stage(f"2/3 the study grid on fold {fold}, each job its own process (reproduce): segment -> train-patch / "
          f"train-global -> predict-base -> train-ensemble -> evaluate -> audit")
    jobs = _run_grid(config, work, out)
    _summarise(jobs, out)
    stage("3/3 export the Patched FLANNEL pipeline as a SavedModel, then predict with it")
    patch_runs = [job.target for job in jobs if job.kind == "train" and job.args[0] == "train-patch"]
    ensemble = next(job.target for job in jobs if job.name == f"train-ensemble f{fold} patch")
    test_files = [row["path"] for row in rows if row["split"] == "test"][:4]
    _export_and_predict(config, patch_runs, ensemble, out, test_files)
    click.echo(f"total {stage.total():.0f} s; report -> {out / 'report' / 'report.md'}")
    return out / "report" / "report.md"
