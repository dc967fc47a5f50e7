"""`demo`: the whole pipeline on the bundled real sample, one stage after the other.

prepare-data -> segment (shipped lung segmenter) -> train-patch and train-global
for each demo backbone on one fold -> predict-base -> train-ensemble (patched
and original FLANNEL) -> evaluate -> audit -> export + predict. A demonstration on 40
images, not a result.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import click


class _NewModelTracing(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning, which the demo would print wrongly.

    Every Keras model traces its own train/predict functions once. TensorFlow's retracing detector
    counts traces of the same Python function across all of them, so a process that trains and
    loads several models one after the other (the demo: 2 learners, 2 predict-base, 2 ensembles,
    export) crosses its threshold of 5 although no model retraces; batch shapes are fixed
    (`predict_image_scores` pads the last batch), and each CLI command runs one model.
    """

    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


class _Stages:
    """Prints each stage's title with the time since the demo started, and the total at the end."""

    def __init__(self):
        self.started = time.time()

    def __call__(self, title):
        click.secho(f"\n== {title}  [{time.time() - self.started:.0f} s]", bold=True)
        return time.time()

    def total(self):
        return time.time() - self.started


def _ensemble_line(name, summary, run_dir):
    """One line saying what an ensemble learned: its mean learner weights and the spread of its test outputs."""
    from tfflannel.predictions import read_predictions

    probabilities = read_predictions(run_dir, "test").scores("prob")
    learned = summary.get("mean_weight_on_test", {})
    weights = ", ".join(f"{learner} {weight:+.2f}" for learner, weight in learned.items())
    return (f"{name}: mean learner weights {weights or 'none (mlp)'}; test outputs {probabilities.min():.3f}-"
            f"{probabilities.max():.3f} (std over films {probabilities.std(axis=0).mean():.3f}), "
            f"temperature {summary['temperature']:.3f}")


def _train_learners(config, work, runs, stage):
    """Stage 3: a patch and a global learner per demo backbone; returns (patch runs, global runs)."""
    from tfflannel.learners.train import train_global_learner, train_patch_learner

    demo = config.demo
    config.patched.epochs, config.global_learner.epochs = demo.patch_epochs, demo.global_epochs
    patch_runs, global_runs = [], []
    for backbone in demo.backbones:
        stage(f"3/8 train-patch {backbone}, fold {demo.fold}")
        train_patch_learner(config, backbone, demo.fold, work, runs / f"patch_{backbone}")
        patch_runs.append(runs / f"patch_{backbone}")
        stage(f"3/8 train-global {backbone}, fold {demo.fold}")
        train_global_learner(config, backbone, demo.fold, work, runs / f"global_{backbone}")
        global_runs.append(runs / f"global_{backbone}")
    return patch_runs, global_runs


def _audit(config, work, runs, report, learner_runs, stage):
    """Stage 7: the shortcut and confound audit, appended to report.md."""
    from tfflannel.audit.report import append_audit_section
    from tfflannel.audit.run import audit_runs

    started = stage("7/8 audit: does it look at the lungs? (counterfactual inputs, source probe, verdict)")
    audit = audit_runs(learner_runs, work, report, config, runs / "ensemble_patched", progress=False)
    append_audit_section(report / "report.md", report / "audit.md")
    for learner in audit["learners"]:
        click.echo(f"{learner['run']}: lung attention {learner['lung_attention']}, shortcut classes "
                   f"{learner['shortcut_classes'] or 'none'}")
    click.echo(f"audit -> {report / 'audit.md'} ({time.time() - started:.0f} s)")


def _export_and_predict(config, segmenter, patch_runs, runs, out, test_files):
    """Stage 8: export the patched pipeline, predict test films with it, and draw a patch Grad-CAM."""
    from tfflannel.data.io import read_image
    from tfflannel.explain.gradcam import explain_image, save_explanation
    from tfflannel.export.saved_model import export_pipeline
    from tfflannel.film_pipeline import ViewSettings
    from tfflannel.serving.builder import pipeline_from_config
    from tfflannel.serving.predict import load_exported, predict_files

    shutil.rmtree(out / "export", ignore_errors=True)
    pipeline = pipeline_from_config(config, segmenter, patch_runs, runs / "ensemble_patched")
    target = export_pipeline(pipeline, out / "export")
    records, _ = predict_files(load_exported(out / "export"), test_files)
    click.echo(f"SavedModel -> {target}; predict --model on {len(records)} test films:")
    click.echo(json.dumps(records[:2], indent=2))
    explained = save_explanation(explain_image(read_image(test_files[0])[0], patch_runs[-1], k=config.inference.k,
                                               seed=config.inference.seed, view=ViewSettings.from_config(config)),
                                 out / "report" / "gradcam.png")
    click.echo(f"probabilistic patch Grad-CAM of {Path(test_files[0]).name} -> {explained}")


def run_demo(config, out_dir):
    """Run every stage on `tfflannel/sample/cls` into `out_dir`, printing each stage's progress.

    Writes `work/` (manifest, segment cache), `runs/` (one patch and one global
    learner per `config.demo.backbones` on fold `config.demo.fold`, the patched and
    global ensembles), `report/` (metrics, table3.md, report.md with the audit, audit.json, a Grad-CAM figure)
    and `export/` (the SavedModel, replaced if present), then classifies up to 4
    test-split films with the export.

    Args:
        config: ExperimentConfig. Validated config; `config.demo` picks backbones, fold and
            epochs. Modified in place: `patched.epochs` and `global_learner.epochs` are set to
            `demo.patch_epochs` and `demo.global_epochs`.
        out_dir: str or `pathlib.Path`. Output folder, created if needed.

    Returns:
        pathlib.Path. `out_dir/report/report.md`.
    """
    import tensorflow as tf

    from tfflannel.data.manifest import prepare_manifest
    from tfflannel.ensemble.train import train_ensemble
    from tfflannel.evaluation.report import evaluate_runs
    from tfflannel.learners.infer import predict_base
    from tfflannel.sample import CLS_DIR
    from tfflannel.segmentation.cache import CacheSettings, build_cache
    from tfflannel.segmentation.inference import load_segmenter

    for logger in (tf.get_logger(), logging.getLogger("tensorflow")):
        logger.addFilter(_NewModelTracing())
    out = Path(out_dir)
    work, runs, report = out / "work", out / "runs", out / "report"
    stage = _Stages()
    stage("1/8 prepare-data on the bundled sample")
    rows = prepare_manifest(work, folders=[CLS_DIR], seed=config.data.seed, folds=config.data.folds,
                            test_size=config.data.test_size, max_distance=config.data.link_max_distance,
                            min_correlation=config.data.link_min_correlation)
    click.echo(f"{len(rows)} images -> {work / 'manifest.csv'}")
    stage("2/8 segment with the shipped lung segmenter")
    segmenter = load_segmenter()
    summary = build_cache(work, segmenter, CacheSettings.from_config(config))
    click.echo(f"cache -> {summary['cache']} (QC grid: qc.png)")
    patch_runs, global_runs = _train_learners(config, work, runs, stage)
    stage(f"4/8 predict-base (K={config.inference.k} patches per image)")
    for run in patch_runs + global_runs:
        speeds = predict_base(run, work, config.inference.k, config.inference.images_per_batch, config.inference.seed)
        click.echo(f"{run.name}: " + ", ".join(f"{role} {speed:.1f} img/s" for role, speed in speeds.items()))
    stage("5/8 train-ensemble: Patched FLANNEL and original FLANNEL")
    for name, members in (("ensemble_patched", patch_runs), ("ensemble_global", global_runs)):
        learned = train_ensemble(config, members, runs / name, fold=config.demo.fold, progress=False)
        click.echo(_ensemble_line(name, learned, runs / name))
    stage("6/8 evaluate")
    evaluate_runs(patch_runs + global_runs + [runs / "ensemble_patched", runs / "ensemble_global"], report)
    click.echo((report / "table3.md").read_text())
    _audit(config, work, runs, report, patch_runs + global_runs, stage)
    stage("8/8 export the Patched FLANNEL pipeline as a SavedModel, then predict with it")
    test_files = [row["path"] for row in rows if row["split"] == "test"][:4]
    _export_and_predict(config, segmenter, patch_runs, runs, out, test_files)
    click.echo(f"total {stage.total():.0f} s; report -> {report / 'report.md'}")
    return report / "report.md"
