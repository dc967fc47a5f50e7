"""Command-line interface: one thin command per pipeline stage.

Each command parses its options, loads the config, calls one library function
and prints where the outputs went. TensorFlow is imported inside the commands
that need it, so `--help` and data preparation stay fast.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import click

from tfflannel import CLASS_NAMES, DISCLAIMER

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter hides our progress output


class InputError(click.ClickException):
    """Bad input (missing file, bad metadata, no images): exit code 2."""

    exit_code = 2


def reports_input_errors(command):
    """Turn library errors about bad input into a clear message and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from tfflannel.data.io import ImageReadError
        from tfflannel.data.sources import DatasetError

        try:
            return command(*args, **kwargs)
        except (DatasetError, ImageReadError, FileNotFoundError, FileExistsError, ValueError) as error:
            raise InputError(str(error)) from error

    return wrapper


def config_options(default_config):
    """`--config FILE` and repeatable `--set section.key=value`."""

    def decorate(command):
        command = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                               help="Override one config value, e.g. --set data.seed=1 (repeatable).")(command)
        command = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=default_config,
                               show_default=True,
                               help="YAML config (a diff over the built-in defaults).")(command)
        return command

    return decorate


REPO_ROOT = Path(__file__).resolve().parents[1]


def load_cli_config(config_path, overrides, default_config=None, required=False):
    """Load the config. A default `configs/X.yaml` is looked up in the working directory, then in the
    checkout tfflannel was installed from; if neither has it, the built-in defaults apply (or, when
    `required`, a clear error)."""
    from tfflannel.config import load_config

    if config_path and config_path == default_config and not Path(config_path).exists():
        candidate = REPO_ROOT / default_config
        if candidate.exists():
            config_path = str(candidate)
        elif required:
            raise click.UsageError(f"{default_config} not found here or in {REPO_ROOT}; pass --config FILE")
        else:
            config_path = None
    return load_config(config_path, overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="tfflannel")
def main(verbose):
    """tfflannel: Patched FLANNEL chest X-ray classification (research use only).

    Stages, in order: prepare-data -> segment -> train-patch / train-global ->
    predict-base -> train-ensemble -> evaluate.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")


@main.command("prepare-data")
@click.option("--ccx", type=click.Path(file_okay=False), help="COVID chest X-ray collection checkout (metadata.csv + images/).")
@click.option("--kcx", type=click.Path(file_okay=False), help="Kaggle pneumonia set: {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg.")
@click.option("--folder", "folders", multiple=True, type=click.Path(file_okay=False),
              help="Any DIR/<label>/* layout, optional DIR/patients.csv (filename,patient_id[,source,view]). Repeatable.")
@click.option("--sample", is_flag=True, help="Use the bundled real sample (40 images, 10 per class).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Work directory for manifest.csv, rejected.csv, statistics.md.")
@click.option("--seed", type=int, default=None, help="Split seed  [default: data.seed = 0].")
@click.option("--folds", type=int, default=None, help="Number of cross-validation folds  [default: data.folds = 5].")
@click.option("--test-size", type=float, default=None, help="Share of patients held out as test  [default: data.test_size = 0.2].")
@config_options(None)
@reports_input_errors
def prepare_data(ccx, kcx, folders, sample, out, seed, folds, test_size, config_path, overrides):
    """Build WORKDIR/manifest.csv with patient-grouped, stratified, seeded test split and folds.

    Keeps AP/PA X-rays with one of the four labels (covid19, viral_pneumonia,
    bacterial_pneumonia, normal); every input left out is listed in rejected.csv
    with its reason; identical files are kept once. Exit code 2 on bad input.
    """
    from tfflannel.data.manifest import prepare_manifest

    config = load_cli_config(config_path, overrides).data
    folders = list(folders)
    if sample:
        from tfflannel.sample import CLS_DIR

        folders.append(str(CLS_DIR))
    rows = prepare_manifest(
        out, ccx=ccx, kcx=kcx, folders=folders,
        seed=config.seed if seed is None else seed,
        folds=config.folds if folds is None else folds,
        test_size=config.test_size if test_size is None else test_size,
        fungal_as_bacterial=config.fungal_as_bacterial,
    )
    out = Path(out)
    click.echo(f"{len(rows)} images kept -> {out / 'manifest.csv'}")
    click.echo(f"rejections -> {out / 'rejected.csv'}; summary -> {out / 'statistics.md'}")
    click.echo(DISCLAIMER)


def _segmentation_pairs(pairs, jsrt, scr, montgomery):
    from tfflannel.segmentation.readers import read_jsrt, read_montgomery, read_pairs

    found = []
    if pairs:
        found += read_pairs(pairs)
    if jsrt or scr:
        if not (jsrt and scr):
            raise click.UsageError("--jsrt and --scr go together (JSRT films and their SCR masks)")
        found += read_jsrt(jsrt, scr)
    if montgomery:
        found += read_montgomery(montgomery)
    if not found:
        raise click.UsageError("no training data: give --pairs, --jsrt with --scr, or --montgomery")
    return found


@main.command("train-seg")
@click.option("--pairs", type=click.Path(exists=True), help="Folder (images/ + masks/) or CSV (image,mask[,patient_id]) of pairs; mask > 0 is lung.")
@click.option("--jsrt", type=click.Path(file_okay=False), help="JSRT folder of raw .IMG films (with --scr).")
@click.option("--scr", type=click.Path(file_okay=False), help="SCR masks folder ({heart,left lung,right lung}/*.gif).")
@click.option("--montgomery", type=click.Path(file_okay=False), help="Montgomery County set (CXR_png/ + ManualMask/).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (model.keras, config.yaml, metrics.json, logs/).")
@click.option("--epochs", type=int, help="Epochs  [default: segmentation.epochs].")
@click.option("--model", "preset", type=click.Choice(["fcdn103", "fcdn67", "fcdn56", "fcdn_small"]), help="FC-DenseNet family member  [default: segmentation.model].")
@config_options("configs/segmentation.yaml")
@reports_input_errors
def train_seg(pairs, jsrt, scr, montgomery, out, epochs, preset, config_path, overrides):
    """Train an FC-DenseNet lung segmenter; a killed run resumes when rerun with the same --out."""
    from tfflannel.segmentation.train import train_segmenter

    config = load_cli_config(config_path, overrides, "configs/segmentation.yaml")
    if epochs is not None:
        config.segmentation.epochs = epochs
    if preset is not None:
        config.segmentation.model = preset
    found = _segmentation_pairs(pairs, jsrt, scr, montgomery)
    metrics = train_segmenter(config, found, out)
    click.echo(json.dumps(metrics, indent=2))
    click.echo(f"model -> {Path(out) / 'model.keras'}; TensorBoard: tensorboard --logdir {Path(out) / 'logs'}")


@main.command("evaluate-seg")
@click.option("--model", "model_path", type=click.Path(exists=True), help="train-seg run directory, .keras file or descriptor .json  [default: the shipped lung segmenter].")
@click.option("--pairs", required=True, type=click.Path(exists=True), help="Folder or CSV of image/mask pairs.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the JSON here.")
@reports_input_errors
def evaluate_seg(model_path, pairs, out):
    """Jaccard and Dice of post-processed lung masks, at each ground-truth mask's own resolution."""
    from tfflannel.segmentation.inference import evaluate_segmenter, load_segmenter
    from tfflannel.segmentation.readers import read_pairs
    from tfflannel.utils import write_text_atomic

    result = evaluate_segmenter(load_segmenter(model_path), read_pairs(pairs))
    text = json.dumps(result, indent=2)
    if out:
        write_text_atomic(out, text + "\n")
    click.echo(text)
    click.echo(f"jaccard_mean={result['jaccard_mean']:.4f} dice_mean={result['dice_mean']:.4f} over {result['images']} images")


def _parse_shard(value):
    try:
        part, parts = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N such as 1/4. Received: {value!r}.", param_hint="--shard") from None
    if not 1 <= part <= parts:
        raise click.BadParameter(f"I must be between 1 and N. Received: {value!r}.", param_hint="--shard")
    return part, parts


@main.command("segment")
@click.option("--model", "model_path", type=click.Path(exists=True), help="Segmenter (run dir, .keras or .json)  [default: the shipped lung segmenter].")
@click.option("--data", required=True, type=click.Path(file_okay=False, exists=True), help="Work directory holding manifest.csv.")
@click.option("--shard", default="1/1", show_default=True, help="Process only part I of N (several machines share the work).")
@config_options("configs/segmentation.yaml")
@reports_input_errors
def segment(model_path, data, shard, config_path, overrides):
    """Segment every manifest image into the masked-image cache WORKDIR/cache/ (resumable, rebuilds only what is stale)."""
    from tfflannel.segmentation.cache import CacheSettings, build_cache
    from tfflannel.segmentation.inference import load_segmenter

    config = load_cli_config(config_path, overrides, "configs/segmentation.yaml")
    summary = build_cache(data, load_segmenter(model_path), CacheSettings.from_config(config), _parse_shard(shard))
    click.echo(json.dumps(summary, indent=2))
    if summary["errors"]:
        click.echo(f"warning: {summary['errors']} image(s) could not be read; see {summary['cache']}/errors.csv", err=True)
    if summary["complete"]:
        click.echo(f"index -> {summary['cache']}/index.csv; masks at a glance -> {summary['cache']}/qc.png")


def _run_list(values):
    """`--runs a --runs b` and `--runs a,b` both name runs a and b."""
    runs = [item for value in values for item in value.split(",") if item]
    for run in runs:
        if not Path(run).is_dir():
            raise click.BadParameter(f"{run}: not a directory", param_hint="--runs")
    return runs


def _backbone_choice():
    from tfflannel.models.backbones import list_backbones

    return click.Choice(list_backbones())


def learner_options(default_config):
    def decorate(command):
        options = [
            click.option("--backbone", required=True, type=_backbone_choice(), help="Registered backbone name."),
            click.option("--fold", required=True, type=int, help="Validation fold (1..K of prepare-data)."),
            click.option("--data", required=True, type=click.Path(file_okay=False, exists=True), help="Work directory (manifest.csv, cache/)."),
            click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory; rerun the same command to resume."),
            click.option("--epochs", type=int, help="Epochs  [default: from the config]."),
            click.option("--weights", default="none", show_default=True, help="imagenet | none | PATH to a .weights.h5 (or a Keras ImageNet .h5)."),
            click.option("--batch-size", type=int, help="Batch size  [default: from the config]."),
            click.option("--mixed-precision", is_flag=True, help="float16 compute (GPUs)."),
        ]
        for option in reversed(options):
            command = option(command)
        return config_options(default_config)(command)
    return decorate


def _train_learner(kind, backbone, fold, data, out, epochs, weights, batch_size, mixed_precision, config_path,
                   overrides):
    from tfflannel.learners.train import train_global_learner, train_patch_learner

    default = "configs/patched.yaml" if kind == "patch" else "configs/global.yaml"
    config = load_cli_config(config_path, overrides, default)
    section = config.patched if kind == "patch" else config.global_learner
    if epochs is not None:
        section.epochs = epochs
    if batch_size is not None:
        section.batch_size = batch_size
    config.runtime.mixed_precision = config.runtime.mixed_precision or mixed_precision
    trainer = train_patch_learner if kind == "patch" else train_global_learner
    trainer(config, backbone, fold, data, out, weights=weights)
    click.echo(f"model -> {Path(out) / 'model.keras'}; history -> {Path(out) / 'history.csv'}")


@main.command("train-patch")
@learner_options("configs/patched.yaml")
@reports_input_errors
def train_patch(**options):
    """Train a Patched FLANNEL base learner on random lung-centred patches of the masked-image cache."""
    _train_learner("patch", **options)


@main.command("train-global")
@learner_options("configs/global.yaml")
@reports_input_errors
def train_global(**options):
    """Train an original-FLANNEL whole-image base learner (resize 336, random crop, flip)."""
    _train_learner("global", **options)


@main.command("predict-base")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True), help="A train-patch or train-global run directory.")
@click.option("--data", type=click.Path(file_okay=False, exists=True), help="Work directory  [default: the run's own].")
@click.option("--k", type=int, help="Patches per image  [default: inference.k = 100; 1 for global runs].")
@config_options("configs/patched.yaml")
@reports_input_errors
def predict_base_command(run_dir, data, k, config_path, overrides):
    """Per-image vote fractions and mean probabilities for the fold's train, valid and test images."""
    from tfflannel.learners.infer import predict_base

    inference = load_cli_config(config_path, overrides, "configs/patched.yaml").inference
    speeds = predict_base(run_dir, data, k or inference.k, inference.images_per_batch, inference.seed)
    for role, speed in speeds.items():
        click.echo(f"{role}: {speed:.1f} images/s -> {Path(run_dir) / 'predictions' / (role + '.csv')}")


@main.command("train-ensemble")
@click.option("--fold", type=int, help="Fold of the runs (checked against their run.yaml).")
@click.option("--runs", "run_dirs", required=True, multiple=True,
              help="Base-learner run directories with predictions/ (repeat --runs, or separate with commas).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Ensemble run directory.")
@click.option("--fit-on", type=click.Choice(["valid", "train"]), help="valid: out-of-fold predictions (default); train: in-sample, as the original.")
@config_options("configs/ensemble.yaml")
@reports_input_errors
def train_ensemble_command(fold, run_dirs, out, fit_on, config_path, overrides):
    """Fit the FLANNEL neural weight module with a focal loss on predictions joined by image_id."""
    from tfflannel.ensemble.train import train_ensemble

    config = load_cli_config(config_path, overrides, "configs/ensemble.yaml")
    if fit_on:
        config.ensemble.fit_on = fit_on
    summary = train_ensemble(config, _run_list(run_dirs), out, fold)
    click.echo(json.dumps(summary, indent=2))
    click.echo(f"model -> {Path(out) / 'model.keras'}; test predictions -> {Path(out) / 'predictions' / 'test.csv'}")


@main.command("evaluate")
@click.option("--runs", "run_dirs", required=True, multiple=True,
              help="Run directories (base learners and ensembles, any folds; repeat --runs, or separate with commas).")
@click.option("--out", default="report", show_default=True, type=click.Path(file_okay=False), help="Output directory.")
@reports_input_errors
def evaluate_command(run_dirs, out):
    """Per-class F1, macro-F1, Table 3 over folds, confusion matrices, PR/ROC curves and report.md."""
    from tfflannel.evaluation.report import evaluate_runs

    evaluate_runs(_run_list(run_dirs), out)
    click.echo((Path(out) / "table3.md").read_text())
    click.echo(f"report -> {Path(out) / 'report.md'}")
    click.echo(DISCLAIMER)


@main.command("export")
@click.option("--seg", "seg_path", type=click.Path(exists=True), help="Segmenter (run dir, .keras or .json)  [default: the shipped lung segmenter].")
@click.option("--runs", "run_dirs", required=True, multiple=True, help="Base-learner runs (repeat --runs or separate with commas; the ensemble's order).")
@click.option("--ensemble", "ensemble_dir", type=click.Path(file_okay=False, exists=True), help="train-ensemble run; omit to export a single learner.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Export directory (TF Serving model base path).")
@click.option("--version", default=1, show_default=True, type=int, help="Version folder to write.")
@config_options("configs/patched.yaml")
@reports_input_errors
def export_command(seg_path, run_dirs, ensemble_dir, out, version, config_path, overrides):
    """Write one SavedModel (raw image -> 4 class probabilities) in TF Serving's EXPORT_DIR/<version>/ layout."""
    from tfflannel.export.saved_model import export_pipeline, new_version_dir, pipeline_from_config
    from tfflannel.segmentation.inference import load_segmenter

    config = load_cli_config(config_path, overrides, "configs/patched.yaml")
    runs = _run_list(run_dirs)
    new_version_dir(out, version)                # fail before the slow build, not after it
    if len(runs) > 1 and not ensemble_dir:
        raise click.UsageError("several --runs need an --ensemble that combines them")
    pipeline = pipeline_from_config(config, load_segmenter(seg_path), runs, ensemble_dir)
    target = export_pipeline(pipeline, out, version)
    click.echo(f"SavedModel -> {target} (signatures: serving_default on encoded PNG/JPEG, predict_uint8)")
    click.echo(f"inspect: saved_model_cli show --dir {target} --all")


@main.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--model", "model_dir", type=click.Path(file_okay=False, exists=True), help="Export directory (from `export`).")
@click.option("--runs", "run_dirs", multiple=True, help="Instead of --model: base-learner runs (with --ensemble for several).")
@click.option("--ensemble", "ensemble_dir", type=click.Path(file_okay=False, exists=True), help="train-ensemble run for --runs.")
@click.option("--format", "output_format", type=click.Choice(["json", "csv"]), default="json", show_default=True, help="Output format on stdout.")
@click.option("--batch-size", default=4, show_default=True, type=int, help="Images of one size per call.")
@click.option("--explain", "explain_dir", type=click.Path(file_okay=False), help="With --runs: also write a Grad-CAM PNG per image and run here.")
@config_options("configs/patched.yaml")
@reports_input_errors
def predict_command(images, model_dir, run_dirs, ensemble_dir, output_format, batch_size, explain_dir, config_path,
                    overrides):
    """Classify PNG, JPEG (8/16-bit) and DICOM files or folders. Research use only; not a diagnosis."""
    import csv as csv_module
    import sys

    from tfflannel.export.predict import load_exported, predict_files

    if bool(model_dir) == bool(run_dirs):
        raise click.UsageError("give either --model EXPORT_DIR or --runs (with --ensemble)")
    if explain_dir and not run_dirs:
        raise click.UsageError("--explain needs --runs: Grad-CAM works on the Keras models, not on an export")
    if model_dir:
        predict_fn = load_exported(model_dir)
    else:
        from tfflannel.export.saved_model import pipeline_from_config
        from tfflannel.segmentation.inference import load_segmenter

        config = load_cli_config(config_path, overrides, "configs/patched.yaml")
        runs = _run_list(run_dirs)
        segmenter = load_segmenter()
        pipeline = pipeline_from_config(config, segmenter, runs, ensemble_dir)
        predict_fn = pipeline.serve_uint8
    records, failures = predict_files(predict_fn, images, batch_size)
    if output_format == "json":
        click.echo(json.dumps(records, indent=2))
    else:
        writer = csv_module.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["file", *[f"prob_{c}" for c in CLASS_NAMES], "label", "lung_fraction", "mask_ok"])
        for record in records:
            writer.writerow([record["file"], *[record["probabilities"][c] for c in CLASS_NAMES], record["label"],
                             record["lung_fraction"], int(record["mask_ok"])])
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


@main.command("explain")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True), help="A train-patch or train-global run.")
@click.option("--out", type=click.Path(dir_okay=False), help="PNG to write  [default: IMAGE stem + _gradcam.png here].")
@click.option("--class", "class_name", type=click.Choice(list(CLASS_NAMES)), help="Class to explain  [default: the predicted one].")
@click.option("--k", type=int, help="Patches for the probabilistic Grad-CAM of patched runs  [default: inference.k].")
@config_options("configs/patched.yaml")
@reports_input_errors
def explain_command(image, run_dir, out, class_name, k, config_path, overrides):
    """Grad-CAM (global runs) or probabilistic patch Grad-CAM (patched runs), masked to the lungs, as a PNG.

    The patches are those predict-base and the export classify: same view, K and seed (inference.k, inference.seed).
    """
    from tfflannel.data.io import read_image
    from tfflannel.explain.gradcam import explain_image, save_explanation
    from tfflannel.film_pipeline import ViewSettings

    config = load_cli_config(config_path, overrides, "configs/patched.yaml")
    result = explain_image(read_image(image)[0], run_dir, class_name, k=k or config.inference.k,
                           seed=config.inference.seed, view=ViewSettings.from_config(config))
    target = save_explanation(result, out or f"{Path(image).stem}_gradcam.png")
    click.echo(json.dumps({"file": image, "target": result["target"], "probabilities": result["probabilities"]}, indent=2))
    click.echo(f"explanation -> {target}")
    click.echo(DISCLAIMER)


@main.command("demo")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False), help="Where everything goes.")
@config_options("configs/demo.yaml")
@reports_input_errors
def demo_command(out, config_path, overrides):
    """The whole pipeline on the bundled real sample in a few minutes on a CPU (a demo, not a result)."""
    from tfflannel.demo import run_demo

    config = load_cli_config(config_path, overrides, "configs/demo.yaml", required=True)
    report = run_demo(config, out)
    click.echo(DISCLAIMER)
    click.echo(f"open {report}")


if __name__ == "__main__":  # pragma: no cover
    main()
