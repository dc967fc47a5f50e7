"""Serving commands: `export`, `serve`, `predict`, `explain`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tfflannel import CLASS_NAMES, DISCLAIMER
from tfflannel.cli.common import (
    BadInput,
    config_options,
    explicit_config_keys,
    load_cli_config,
    reports_input_errors,
    served_runs,
)


def _take_recorded_inference(config, runs, ensemble_dir, config_path, overrides, k_option=None):
    """K and the patch seed from the runs served, unless the command line or a given config sets them (one line)."""
    from tfflannel.serving.builder import take_recorded_inference

    explicit = explicit_config_keys(config_path, overrides) | ({"inference.k"} if k_option is not None else set())
    note = take_recorded_inference(config, runs, ensemble_dir, explicit)
    if note:
        click.echo(note, err=True)


@click.command("export")
@click.option("--seg", "seg_path", type=click.Path(exists=True),
              help="Segmenter (run dir, .keras or .json)  [default: the shipped lung segmenter].")
@click.option("--runs", "run_dirs", required=True, multiple=True,
              help="Base-learner runs (repeat --runs or separate with commas; the ensemble's order).")
@click.option("--ensemble", "ensemble_dir", type=click.Path(file_okay=False, exists=True),
              help="train-ensemble run; omit to export a single learner.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Export directory (TF Serving model base path).")
@click.option("--version", default=1, show_default=True, type=int, help="Version folder to write.")
@config_options("configs/patched.yaml")
@reports_input_errors
def export_command(seg_path, run_dirs, ensemble_dir, out, version, config_path, overrides):
    """Write one SavedModel (raw image -> 4 class probabilities) in TF Serving's EXPORT_DIR/<version>/ layout."""
    from tfflannel.export.saved_model import export_pipeline, new_version_dir
    from tfflannel.segmentation.inference import load_segmenter
    from tfflannel.serving.builder import pipeline_from_config

    config = load_cli_config(config_path, overrides, "configs/patched.yaml")
    runs = served_runs(run_dirs, ensemble_dir)
    new_version_dir(out, version)                # fail before the slow build, not after it
    _take_recorded_inference(config, runs, ensemble_dir, config_path, overrides)
    pipeline = pipeline_from_config(config, load_segmenter(seg_path), runs, ensemble_dir)
    target = export_pipeline(pipeline, out, version)
    click.echo(f"SavedModel -> {target} (signatures: serving_default on encoded PNG/JPEG, predict_uint8)")
    click.echo(f"inspect: saved_model_cli show --dir {target} --all")


@click.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model_dir", type=click.Path(file_okay=False, exists=True),
              help="Export directory (from `export`).")
@click.option("--runs", "run_dirs", multiple=True,
              help="Instead of --model: base-learner runs (with --ensemble for several).")
@click.option("--ensemble", "ensemble_dir", type=click.Path(file_okay=False, exists=True),
              help="train-ensemble run for --runs.")
@click.option("--seg", "seg_path", type=click.Path(exists=True),
              help="With --runs: segmenter (run dir, .keras or .json)  [default: the shipped lung segmenter].")
@click.option("--format", "output_format", type=click.Choice(["json", "csv"]), default="json", show_default=True,
              help="Output format on stdout.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1),
              help="Images of one size per call.")
@click.option("--explain", "explain_dir", type=click.Path(file_okay=False),
              help="With --runs: also write a Grad-CAM PNG per image and run here.")
@config_options("configs/patched.yaml")
@reports_input_errors
def predict_command(images, model_dir, run_dirs, ensemble_dir, seg_path, output_format, batch_size, explain_dir,
                    config_path, overrides):
    """Classify PNG, JPEG (8/16-bit) and DICOM files or folders. Research use only; not a diagnosis."""
    import csv as csv_module
    import sys

    from tfflannel.data.io import IMAGE_SUFFIXES
    from tfflannel.serving.predict import expand_inputs, load_exported, predict_files

    if bool(model_dir) == bool(run_dirs):
        raise click.UsageError("give either --model EXPORT_DIR or --runs (with --ensemble)")
    if explain_dir and not run_dirs:
        raise click.UsageError("--explain needs --runs: Grad-CAM works on the Keras models, not on an export")
    if model_dir and (seg_path or ensemble_dir):
        raise click.UsageError("--seg and --ensemble go with --runs; an export holds its segmenter and ensemble")
    runs = served_runs(run_dirs, ensemble_dir) if run_dirs else []
    if not expand_inputs(images):
        raise BadInput(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(images)}")
    config = load_cli_config(config_path, overrides, "configs/patched.yaml")
    if model_dir:
        predict_fn = load_exported(model_dir)
    else:
        from tfflannel.segmentation.inference import load_segmenter
        from tfflannel.serving.builder import pipeline_from_config

        segmenter = load_segmenter(seg_path)
        _take_recorded_inference(config, runs, ensemble_dir, config_path, overrides)
        pipeline = pipeline_from_config(config, segmenter, runs, ensemble_dir)
        predict_fn = pipeline.serve_uint8
    records, failures = predict_files(predict_fn, images, batch_size)
    if output_format == "json":
        click.echo(json.dumps(records, indent=2))
    else:
        writer = csv_module.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["file", *[f"prob_{c}" for c in CLASS_NAMES], "label", "lung_fraction", "mask_ok",
                         "mask_confidence", "flip_disagreement"])
        for record in records:
            writer.writerow([record["file"], *[record["probabilities"][c] for c in CLASS_NAMES], record["label"],
                             record["lung_fraction"], int(record["mask_ok"]), record.get("mask_confidence", ""),
                             record.get("flip_disagreement", "")])
    if explain_dir:
        from tfflannel.data.io import read_image
        from tfflannel.explain.gradcam import explain_with_run, save_explanation

        for record in records:
            image = read_image(record["file"])[0]
            for run, model, info in zip(runs, pipeline.learners, pipeline.learner_info, strict=True):
                result = explain_with_run(image, model, info, None, pipeline.k, pipeline.seed, segmenter, pipeline.view)
                target = Path(explain_dir) / f"{Path(record['file']).stem}__{Path(run).name}.png"
                save_explanation(result, target)
                click.echo(f"explanation -> {target}", err=True)
    for failure in failures:
        click.echo(f"error: {failure['file']}: {failure['error']}", err=True)
    click.echo(DISCLAIMER, err=True)
    if failures:
        sys.exit(1)


@click.command("explain")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="A train-patch or train-global run.")
@click.option("--out", type=click.Path(dir_okay=False), help="PNG to write  [default: IMAGE stem + _gradcam.png here].")
@click.option("--class", "class_name", type=click.Choice(list(CLASS_NAMES)),
              help="Class to explain  [default: the predicted one].")
@click.option("--k", type=click.IntRange(min=1),
              help="Patches for the probabilistic Grad-CAM of patched runs  [default: the K of the run's "
                   "predict-base scores, else inference.k].")
@click.option("--seg", "seg_path", type=click.Path(exists=True),
              help="Segmenter (run dir, .keras or .json)  [default: the shipped lung segmenter].")
@config_options("configs/patched.yaml")
@reports_input_errors
def explain_command(image, run_dir, out, class_name, k, seg_path, config_path, overrides):
    """Grad-CAM (global runs) or probabilistic patch Grad-CAM (patched runs), masked to the lungs, as a PNG.

    The patches are those predict-base and the export classify: same view, K and seed (those of the run's
    predict-base scores unless --k, --set or a given --config sets inference.k / inference.seed).
    """
    from tfflannel.data.io import read_image
    from tfflannel.explain.gradcam import explain_image, save_explanation
    from tfflannel.film_pipeline import ViewSettings
    from tfflannel.segmentation.inference import load_segmenter

    config = load_cli_config(config_path, overrides, "configs/patched.yaml")
    _take_recorded_inference(config, [run_dir], None, config_path, overrides, k)
    result = explain_image(read_image(image)[0], run_dir, class_name, k=config.inference.k if k is None else k,
                           seed=config.inference.seed, segmenter=load_segmenter(seg_path),
                           view=ViewSettings.from_config(config))
    target = save_explanation(result, out or f"{Path(image).stem}_gradcam.png")
    click.echo(json.dumps({"file": image, "target": result["target"], "probabilities": result["probabilities"]},
                          indent=2))
    click.echo(f"explanation -> {target}")
    click.echo(DISCLAIMER)


@click.command("serve")
@click.option("--model", "model_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="Export directory (from `export`; its highest version is served).")
@click.option("--port", default=8501, show_default=True, type=click.IntRange(0, 65535), help="HTTP port.")
@click.option("--name", default="tfflannel", show_default=True, help="Model name in the URLs (/v1/models/NAME).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (put a gateway with authentication in front before widening it).")
@click.option("--max-body-mb", default=64.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Largest request body in MB; larger ones get 413 unread.")
@click.option("--max-instances", default=16, show_default=True, type=click.IntRange(min=1),
              help="Most images in one predict request.")
@reports_input_errors
def serve_command(model_dir, port, name, host, max_body_mb, max_instances):
    """Serve an export over TF Serving's REST API on KServe's ModelServer (needs the `serve` extra).

    GET /v1/models/NAME is ready; POST /v1/models/NAME:predict takes {"instances": [{"b64": ...}]}.
    Research use only; not a diagnosis.
    """
    from tfflannel.serving.predict import latest_version

    version = latest_version(model_dir)
    try:
        from tfflannel.serving.kserve_app import serve_export
    except ImportError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"serving {version} as {name!r} at http://{host}:{port}/v1/models/{name}", err=True)
    click.echo(DISCLAIMER, err=True)
    serve_export(model_dir, name, host, port, max_body_mb, max_instances)


COMMANDS = (export_command, serve_command, predict_command, explain_command)
