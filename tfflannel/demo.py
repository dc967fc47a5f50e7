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


def _stage(title):
    click.secho(f"\n== {title}", bold=True)
    return time.time()


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
    from tfflannel.learners.train import train_global_learner, train_patch_learner
    from tfflannel.sample import CLS_DIR
    from tfflannel.segmentation.cache import CacheSettings, build_cache
    from tfflannel.segmentation.inference import load_segmenter

    for logger in (tf.get_logger(), logging.getLogger("tensorflow")):
        logger.addFilter(_NewModelTracing())
    out = Path(out_dir)
    work, runs = out / "work", out / "runs"
    demo = config.demo
    started = time.time()
    _stage("1/8 prepare-data on the bundled sample")
    rows = prepare_manifest(work, folders=[CLS_DIR], seed=config.data.seed, folds=config.data.folds,
                            test_size=config.data.test_size, max_distance=config.data.link_max_distance,
                            min_correlation=config.data.link_min_correlation)
    click.echo(f"{len(rows)} images -> {work / 'manifest.csv'}")
    _stage("2/8 segment with the shipped lung segmenter")
    summary = build_cache(work, load_segmenter(), CacheSettings.from_config(config))
    click.echo(f"cache -> {summary['cache']} (QC grid: qc.png)")
    patch_runs, global_runs = [], []
    for backbone in demo.backbones:
        _stage(f"3/8 train-patch {backbone}, fold {demo.fold}")
        config.patched.epochs = demo.patch_epochs
        train_patch_learner(config, backbone, demo.fold, work, runs / f"patch_{backbone}")
        patch_runs.append(runs / f"patch_{backbone}")
        _stage(f"3/8 train-global {backbone}, fold {demo.fold}")
        config.global_learner.epochs = demo.global_epochs
        train_global_learner(config, backbone, demo.fold, work, runs / f"global_{backbone}")
        global_runs.append(runs / f"global_{backbone}")
    _stage(f"4/8 predict-base (K={config.inference.k} patches per image)")
    for run in patch_runs + global_runs:
        speeds = predict_base(run, work, config.inference.k, config.inference.images_per_batch, config.inference.seed)
        click.echo(f"{run.name}: " + ", ".join(f"{role} {speed:.1f} img/s" for role, speed in speeds.items()))
    _stage("5/8 train-ensemble: Patched FLANNEL and original FLANNEL")
    train_ensemble(config, patch_runs, runs / "ensemble_patched", fold=demo.fold)
    train_ensemble(config, global_runs, runs / "ensemble_global", fold=demo.fold)
    _stage("6/8 evaluate")
    evaluate_runs(patch_runs + global_runs + [runs / "ensemble_patched", runs / "ensemble_global"], out / "report")
    click.echo((out / "report" / "table3.md").read_text())
    started_audit = _stage("7/8 audit: does it look at the lungs? (counterfactual inputs, source probe, verdict)")
    from tfflannel.audit.report import append_audit_section
    from tfflannel.audit.run import audit_runs

    audit = audit_runs(patch_runs + global_runs, work, out / "report", config, runs / "ensemble_patched",
                       progress=False)
    append_audit_section(out / "report" / "report.md", out / "report" / "audit.md")
    for learner in audit["learners"]:
        click.echo(f"{learner['run']}: lung attention {learner['lung_attention']}, shortcut classes "
                   f"{learner['shortcut_classes'] or 'none'}")
    click.echo(f"audit -> {out / 'report' / 'audit.md'} ({time.time() - started_audit:.0f} s)")
    _stage("8/8 export the Patched FLANNEL pipeline as a SavedModel, then predict with it")
    from tfflannel.export.saved_model import export_pipeline
    from tfflannel.serving.builder import pipeline_from_config
    from tfflannel.serving.predict import load_exported, predict_files

    shutil.rmtree(out / "export", ignore_errors=True)
    pipeline = pipeline_from_config(config, load_segmenter(), patch_runs, runs / "ensemble_patched")
    target = export_pipeline(pipeline, out / "export")
    test_files = [row["path"] for row in rows if row["split"] == "test"][:4]
    records, _ = predict_files(load_exported(out / "export"), test_files)
    click.echo(f"SavedModel -> {target}; predict --model on {len(records)} test films:")
    click.echo(json.dumps(records[:2], indent=2))
    from tfflannel.data.io import read_image
    from tfflannel.explain.gradcam import explain_image, save_explanation
    from tfflannel.film_pipeline import ViewSettings

    explained = save_explanation(explain_image(read_image(test_files[0])[0], patch_runs[-1], k=config.inference.k,
                                               seed=config.inference.seed, view=ViewSettings.from_config(config)),
                                 out / "report" / "gradcam.png")
    click.echo(f"probabilistic patch Grad-CAM of {Path(test_files[0]).name} -> {explained}")
    click.echo(f"total {time.time() - started:.0f} s; report -> {out / 'report' / 'report.md'}")
    return out / "report" / "report.md"
