"""Command-line interface: one thin command per pipeline stage.

Each command parses its options, loads the config, calls one library function
and prints where the outputs went. TensorFlow is imported inside the commands
that need it (`tests/test_cli.py` checks that importing this module imports
neither TensorFlow nor Keras), so `--help` and data preparation stay fast.

Exit codes: 0 success; 1 some input files could not be processed (`predict`),
or a bug (with its traceback); 2 bad input: a missing or malformed file, an
option or config value out of range (`tfflannel.errors.InputError`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
from pathlib import Path

import click

from tfflannel import CLASS_NAMES, DISCLAIMER, __version__
from tfflannel.backbone_names import BACKBONE_NAMES, TORCHVISION_BACKBONE_NAMES
from tfflannel.errors import InputError


class BadInput(click.ClickException):
    """Bad input (missing file, bad metadata or config, no images): a one-line message and exit code 2."""

    exit_code = 2


def reports_input_errors(command):
    """Turn the library's `InputError` and missing or clashing files into a clear message and exit code 2.

    Any other exception is a bug and keeps its traceback. Also imports TensorFlow quietly first (see
    `_quiet_tensorflow_import`), after the options were parsed, so `--help` never imports it.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _quiet_tensorflow_import(click.get_current_context(silent=True))
        try:
            return command(*args, **kwargs)
        except (InputError, FileNotFoundError, FileExistsError) as error:
            raise BadInput(str(error)) from error

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


def load_cli_config(config_path, overrides, default_config=None):
    """Load the config and apply its image limits (`data.max_megapixels`, `data.min_side`) to `read_image`.

    A default `configs/X.yaml` is looked up in the working directory, then among the package's own configs
    (`tfflannel/configs/X.yaml`, see `tfflannel.config.packaged_config`).
    """
    from tfflannel.config import load_config, packaged_config
    from tfflannel.data.io import set_image_limits

    if config_path and config_path == default_config and not Path(config_path).exists():
        config_path = packaged_config(Path(default_config).name)
    config = load_config(config_path, overrides)
    set_image_limits(config.data.max_megapixels, config.data.min_side)
    return config


@contextlib.contextmanager
def _quiet_stderr():
    """Send file descriptor 2 to /dev/null (C++ start-up logs written before TF_CPP_MIN_LOG_LEVEL applies)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _set_verbosity(verbose):
    """Quiet TensorFlow on stderr unless `-v`: C++ logs (CUDA, absl, oneDNN) and its Python warnings."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _quiet_tensorflow_import(ctx):
    """Without `-v`, import TensorFlow with stderr muted.

    absl logs CUDA/oneDNN lines before it reads TF_CPP_MIN_LOG_LEVEL. Commands in TENSORFLOW_FREE_COMMANDS skip it.
    """
    if ctx is None or ctx.find_root().params.get("verbose") or ctx.info_name in TENSORFLOW_FREE_COMMANDS:
        return
    if "tensorflow" not in sys.modules:
        with _quiet_stderr():
            import tensorflow  # noqa: F401


TENSORFLOW_FREE_COMMANDS = frozenset({"prepare-data"})
"""Commands that never import TensorFlow; every other command imports it (quietly) before it starts."""


def _print_version(ctx, _param, value):
    """`--version`: tfflannel, TensorFlow and Keras versions and the visible GPUs (imports TensorFlow)."""
    if not value or ctx.resilient_parsing:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _quiet_stderr():
        import keras
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    click.echo(f"tfflannel {__version__}")
    click.echo(f"TensorFlow {tf.__version__}, Keras {keras.__version__} (backend {keras.backend.backend()})")
    click.echo(f"GPU: {', '.join(gpu.name for gpu in gpus) if gpus else 'none visible'}")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True,
              help="More log output (-v info and TensorFlow's own logs, -vv debug).")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the tfflannel, TensorFlow and Keras versions and the visible GPUs, then exit.")
def main(verbose):
    """tfflannel: Patched FLANNEL chest X-ray classification (research use only).

    Stages, in order: prepare-data -> segment -> train-patch / train-global ->
    predict-base -> train-ensemble -> evaluate.

    Exit codes: 0 done; 1 some input files failed (predict) or an internal error; 2 bad input.
    """
    _set_verbosity(verbose)


@main.command("prepare-data")
@click.option("--ccx", type=click.Path(file_okay=False),
              help="COVID chest X-ray collection checkout (metadata.csv + images/).")
@click.option("--kcx", type=click.Path(file_okay=False),
              help="Kaggle pneumonia set: {train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg.")
@click.option("--folder", "folders", multiple=True, type=click.Path(file_okay=False),
              help="Any DIR/<label>/* layout, optional DIR/patients.csv (filename,patient_id[,source,view]). "
                   "Repeatable.")
@click.option("--sample", is_flag=True, help="Use the bundled real sample (40 images, 10 per class).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Work directory for manifest.csv, rejected.csv, statistics.md.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Split seed  [default: data.seed = 0].")
@click.option("--folds", type=click.IntRange(min=2), default=None,
              help="Number of cross-validation folds  [default: data.folds = 5].")
@click.option("--test-size", type=click.FloatRange(0, 0.5, min_open=True), default=None,
              help="Share of patients held out as test  [default: data.test_size = 0.2].")
@config_options(None)
@reports_input_errors
def prepare_data(ccx, kcx, folders, sample, out, seed, folds, test_size, config_path, overrides):
    """Build WORKDIR/manifest.csv with patient-grouped, stratified, seeded test split and folds.

    Keeps AP/PA X-rays with one of the four labels (covid19, viral_pneumonia,
    bacterial_pneumonia, normal); every input left out is listed in rejected.csv
    with its reason; identical files are kept once. Patient ids sharing an identical or near-identical
    film are split as one group (data.link_max_distance, data.link_min_correlation). Exit code 2 on bad input.
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
        max_distance=config.link_max_distance, min_correlation=config.link_min_correlation,
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
@click.option("--pairs", type=click.Path(exists=True),
              help="Folder (images/ + masks/) or CSV (image,mask[,patient_id]) of pairs; mask > 0 is lung.")
@click.option("--jsrt", type=click.Path(file_okay=False), help="JSRT folder of raw .IMG films (with --scr).")
@click.option("--scr", type=click.Path(file_okay=False), help="SCR masks folder ({heart,left lung,right lung}/*.gif).")
@click.option("--montgomery", type=click.Path(file_okay=False), help="Montgomery County set (CXR_png/ + ManualMask/).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run directory (model.keras, config.yaml, metrics.json, logs/).")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs  [default: segmentation.epochs].")
@click.option("--model", "preset", type=click.Choice(["fcdn103", "fcdn67", "fcdn56", "fcdn_small"]),
              help="FC-DenseNet family member  [default: segmentation.model].")
@click.option("--force", is_flag=True,
              help="Start over even if --out holds a complete run or one made with other settings.")
@config_options("configs/segmentation.yaml")
@reports_input_errors
def train_seg(pairs, jsrt, scr, montgomery, out, epochs, preset, force, config_path, overrides):
    """Train an FC-DenseNet lung segmenter; a killed run resumes exactly when rerun with the same --out."""
    from tfflannel.config import validate
    from tfflannel.segmentation.train import train_segmenter

    config = load_cli_config(config_path, overrides, "configs/segmentation.yaml")
    if epochs is not None:
        config.segmentation.epochs = epochs
    if preset is not None:
        config.segmentation.model = preset
    validate(config, "options")
    found = _segmentation_pairs(pairs, jsrt, scr, montgomery)
    metrics = train_segmenter(config, found, out, force=force, echo=click.echo)
    click.echo(json.dumps(metrics, indent=2))
    click.echo(f"model -> {Path(out) / 'model.keras'}; TensorBoard: tensorboard --logdir {Path(out) / 'logs'}")


@main.command("evaluate-seg")
@click.option("--model", "model_path", type=click.Path(exists=True),
              help="train-seg run directory, .keras file or descriptor .json  [default: the shipped lung segmenter].")
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
    click.echo(f"jaccard_mean={result['jaccard_mean']:.4f} dice_mean={result['dice_mean']:.4f} "
               f"over {result['images']} images")


def _parse_shard(value):
    try:
        part, parts = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N such as 1/4. Received: {value!r}.", param_hint="--shard") from None
    if not 1 <= part <= parts:
        raise click.BadParameter(f"I must be between 1 and N. Received: {value!r}.", param_hint="--shard")
    return part, parts


@main.command("segment")
@click.option("--model", "model_path", type=click.Path(exists=True),
              help="Segmenter (run dir, .keras or .json)  [default: the shipped lung segmenter].")
@click.option("--data", required=True, type=click.Path(file_okay=False, exists=True),
              help="Work directory holding manifest.csv.")
@click.option("--shard", default="1/1", show_default=True,
              help="Process only part I of N (several machines share the work).")
@config_options("configs/segmentation.yaml")
@reports_input_errors
def segment(model_path, data, shard, config_path, overrides):
    """Segment every manifest image into the masked-image cache WORKDIR/cache/.

    Resumable: rebuilds only what is stale.
    """
    from tfflannel.segmentation.cache import CacheSettings, build_cache
    from tfflannel.segmentation.inference import load_segmenter

    config = load_cli_config(config_path, overrides, "configs/segmentation.yaml")
    summary = build_cache(data, load_segmenter(model_path), CacheSettings.from_config(config), _parse_shard(shard))
    click.echo(json.dumps(summary, indent=2))
    if summary["errors"]:
        click.echo(f"warning: {summary['errors']} image(s) could not be read; see {summary['cache']}/errors.csv",
                   err=True)
    if summary["complete"]:
        click.echo(f"index -> {summary['cache']}/index.csv; masks at a glance -> {summary['cache']}/qc.png")


def _served_runs(run_dirs, ensemble_dir):
    """The `--runs` of `export` / `predict`, refused (exit 2) if several come without an `--ensemble`."""
    runs = _run_list(run_dirs)
    if len(runs) > 1 and not ensemble_dir:
        raise click.UsageError("several --runs need an --ensemble that combines them")
    return runs


def _run_list(values):
    """`--runs a --runs b` and `--runs a,b` both name runs a and b."""
    runs = [item for value in values for item in value.split(",") if item]
    for run in runs:
        if not Path(run).is_dir():
            raise click.BadParameter(f"{run}: not a directory", param_hint="--runs")
    return runs


def learner_options(default_config):
    """Decorator adding the options shared by `train-patch` and `train-global`, then `config_options`.

    Adds --backbone, --fold, --data, --out, --epochs, --weights, --batch-size, --mixed-precision and --force.

    Args:
        default_config: str. Default of `--config`, passed to `config_options`.

    Returns:
        callable. A decorator for a click command.
    """
    def decorate(command):
        options = [
            click.option("--backbone", required=True, type=click.Choice(BACKBONE_NAMES),
                         help="Registered backbone name."),
            click.option("--fold", required=True, type=click.IntRange(min=1),
                         help="Validation fold (1..K of prepare-data)."),
            click.option("--data", required=True, type=click.Path(file_okay=False, exists=True),
                         help="Work directory (manifest.csv, cache/)."),
            click.option("--out", required=True, type=click.Path(file_okay=False),
                         help="Run directory; rerun the same command to resume."),
            click.option("--epochs", type=click.IntRange(min=1), help="Epochs  [default: from the config]."),
            click.option("--weights", default="none", show_default=True,
                         help="imagenet | none | PATH: a .weights.h5, a Keras ImageNet .h5, or torchvision weights "
                              "(.pth, .safetensors, import-weights .weights.h5)."),
            click.option("--batch-size", type=click.IntRange(min=1), help="Batch size  [default: from the config]."),
            click.option("--mixed-precision", is_flag=True, help="float16 compute (GPUs)."),
            click.option("--force", is_flag=True, help="Start over even if --out holds a complete run or one made "
                                                       "with other settings."),
        ]
        for option in reversed(options):
            command = option(command)
        return config_options(default_config)(command)
    return decorate


def _check_fold(data, fold):
    """--fold must be one of the validation folds in DATA/manifest.csv (checked before any work starts)."""
    from tfflannel.data.manifest import load_manifest, validation_folds

    manifest = Path(data) / "manifest.csv"
    if not manifest.is_file():
        raise BadInput(f"{manifest}: not found; run prepare-data --out {data} first")
    folds = validation_folds(load_manifest(manifest))
    if fold not in folds:
        raise click.BadParameter(f"{manifest} has folds {folds}. Received: {fold}.", param_hint="--fold")


def _train_learner(kind, backbone, fold, data, out, epochs, weights, batch_size, mixed_precision, force, config_path,
                   overrides):
    from tfflannel.config import validate
    from tfflannel.learners.train import train_global_learner, train_patch_learner

    _check_fold(data, fold)
    default = "configs/patched.yaml" if kind == "patch" else "configs/global.yaml"
    config = load_cli_config(config_path, overrides, default)
    section = config.patched if kind == "patch" else config.global_learner
    if epochs is not None:
        section.epochs = epochs
    if batch_size is not None:
        section.batch_size = batch_size
    config.runtime.mixed_precision = config.runtime.mixed_precision or mixed_precision
    validate(config, "options")
    trainer = train_patch_learner if kind == "patch" else train_global_learner
    fit = trainer(config, backbone, fold, data, out, weights=weights, force=force)
    if fit.already_complete:
        click.echo(fit.describe())
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
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="A train-patch or train-global run directory.")
@click.option("--data", type=click.Path(file_okay=False, exists=True), help="Work directory  [default: the run's own].")
@click.option("--k", type=click.IntRange(min=1),
              help="Patches per image  [default: inference.k = 100; 1 for global runs].")
@click.option("--force", is_flag=True, help="Recompute even if the predictions are up to date.")
@config_options("configs/patched.yaml")
@reports_input_errors
def predict_base_command(run_dir, data, k, force, config_path, overrides):
    """Per-image vote fractions and mean probabilities for the fold's train, valid and test images."""
    from tfflannel.learners.infer import predict_base

    inference = load_cli_config(config_path, overrides, "configs/patched.yaml").inference
    speeds = predict_base(run_dir, data, inference.k if k is None else k, inference.images_per_batch, inference.seed,
                          force=force, echo=click.echo)
    for role, speed in speeds.items():
        click.echo(f"{role}: {speed:.1f} images/s -> {Path(run_dir) / 'predictions' / (role + '.csv')}")


@main.command("train-ensemble")
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
    summary = train_ensemble(config, _run_list(run_dirs), out, fold, force=force, echo=click.echo)
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
    runs = _served_runs(run_dirs, ensemble_dir)
    new_version_dir(out, version)                # fail before the slow build, not after it
    pipeline = pipeline_from_config(config, load_segmenter(seg_path), runs, ensemble_dir)
    target = export_pipeline(pipeline, out, version)
    click.echo(f"SavedModel -> {target} (signatures: serving_default on encoded PNG/JPEG, predict_uint8)")
    click.echo(f"inspect: saved_model_cli show --dir {target} --all")


@main.command("predict")
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
    runs = _served_runs(run_dirs, ensemble_dir) if run_dirs else []
    if not expand_inputs(images):
        raise BadInput(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(images)}")
    config = load_cli_config(config_path, overrides, "configs/patched.yaml")
    if model_dir:
        predict_fn = load_exported(model_dir)
    else:
        from tfflannel.segmentation.inference import load_segmenter
        from tfflannel.serving.builder import pipeline_from_config

        segmenter = load_segmenter(seg_path)
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


@main.command("explain")
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True),
              help="A train-patch or train-global run.")
@click.option("--out", type=click.Path(dir_okay=False), help="PNG to write  [default: IMAGE stem + _gradcam.png here].")
@click.option("--class", "class_name", type=click.Choice(list(CLASS_NAMES)),
              help="Class to explain  [default: the predicted one].")
@click.option("--k", type=click.IntRange(min=1),
              help="Patches for the probabilistic Grad-CAM of patched runs  [default: inference.k].")
@click.option("--seg", "seg_path", type=click.Path(exists=True),
              help="Segmenter (run dir, .keras or .json)  [default: the shipped lung segmenter].")
@config_options("configs/patched.yaml")
@reports_input_errors
def explain_command(image, run_dir, out, class_name, k, seg_path, config_path, overrides):
    """Grad-CAM (global runs) or probabilistic patch Grad-CAM (patched runs), masked to the lungs, as a PNG.

    The patches are those predict-base and the export classify: same view, K and seed (inference.k, inference.seed).
    """
    from tfflannel.data.io import read_image
    from tfflannel.explain.gradcam import explain_image, save_explanation
    from tfflannel.film_pipeline import ViewSettings
    from tfflannel.segmentation.inference import load_segmenter

    config = load_cli_config(config_path, overrides, "configs/patched.yaml")
    result = explain_image(read_image(image)[0], run_dir, class_name, k=config.inference.k if k is None else k,
                           seed=config.inference.seed, segmenter=load_segmenter(seg_path),
                           view=ViewSettings.from_config(config))
    target = save_explanation(result, out or f"{Path(image).stem}_gradcam.png")
    click.echo(json.dumps({"file": image, "target": result["target"], "probabilities": result["probabilities"]},
                          indent=2))
    click.echo(f"explanation -> {target}")
    click.echo(DISCLAIMER)


@main.command("demo")
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


@main.command("import-weights")
@click.option("--backbone", required=True, type=click.Choice(TORCHVISION_BACKBONE_NAMES),
              help="A torchvision-layout backbone.")
@click.option("--from", "source", required=True, type=click.Path(dir_okay=False, exists=True),
              help="torchvision .pth/.pt state dict (needs torch) or .safetensors (timm's *.tv_in1k, no torch).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output FILE.weights.h5.")
@reports_input_errors
def import_weights_command(backbone, source, out):
    """Convert torchvision ImageNet weights into a .weights.h5 of the backbone's reference network.

    The file loads into keras.Model(x, create_backbone(NAME, x, include_top=True)) (the 1000-class
    torchvision model) and reproduces torchvision's logits; train-patch/train-global --weights FILE
    take its backbone layers and start a new head. Nothing is downloaded.
    """
    from tfflannel.models.weights_import import import_weights

    for note in import_weights(backbone, source, out):
        click.echo(f"note: {note}")
    click.echo(f"weights -> {out}")




@main.command("reproduce")
@click.option("--data", required=True, type=click.Path(file_okay=False, exists=True),
              help="Work directory of prepare-data (manifest.csv).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Runs directory: OUT/f<fold>/<mode>_<backbone>, OUT/f<fold>/ensemble_*, OUT/report.")
@click.option("--folds", default="1-5", show_default=True, help="Validation folds, e.g. 1-5 or 1,3.")
@click.option("--backbones", help="Comma-separated backbones  [default: study.backbones of the config: the paper's "
              "five, torchvision layout].")
@click.option("--modes", default="patch,global", show_default=True,
              help="patch (Patched FLANNEL) and/or global (original FLANNEL).")
@click.option("--weights", help="--weights of train-patch/train-global: none (default) | imagenet (only backbones with "
              "Keras ImageNet weights, not the default five) | PATH (one backbone only).")
@click.option("--weights-dir", type=click.Path(file_okay=False),
              help="One weights file per backbone: DIR/<backbone>.weights.h5 (from import-weights), else "
              ".safetensors, else .pth; all are checked before any job runs.")
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
def reproduce_command(data, out, folds, backbones, modes, weights, weights_dir, shard, wait, dry_run, config_path,
                      overrides):
    """The whole study: segment -> train-patch/train-global -> predict-base -> train-ensemble per fold -> evaluate.

    Runs what is not complete, skips what is, resumes what was cut off; rerun the same command after a failure.
    A run made with other settings is not overwritten: its job fails with the exact command (with --force)
    that starts it over.
    """
    from tfflannel import reproduce

    part = _parse_shard(shard)
    if backbones is None:
        backbones = ",".join(load_cli_config(config_path, overrides).study.backbones)
    config_args = (("--config", config_path) if config_path else ()) + tuple(a for o in overrides for a in ("--set", o))
    jobs = reproduce.build_jobs(data, out, reproduce.parse_folds(folds),
                                reproduce.check_names(reproduce.parse_names(backbones, BACKBONE_NAMES, "--backbones")),
                                reproduce.parse_names(modes, reproduce.MODES, "--modes"), weights, config_args, part,
                                weights_dir=weights_dir)
    for fold in reproduce.parse_folds(folds):
        _check_fold(data, fold)
    mine = reproduce.shard_jobs(jobs, part)
    if dry_run:
        program = reproduce.main_program()
        for job in mine:
            click.echo(job.command_line(program))
        return
    click.echo(f"shard {part[0]}/{part[1]}: {len(mine)} of {len(jobs)} jobs ({reproduce.describe_plan(jobs, part)}); "
               f"logs -> {Path(out) / 'logs'}")
    states = reproduce.Runner(jobs, out, part, wait=wait, echo=click.echo).run()
    bad = {name: state for name, state in states.items() if state not in ("done", "complete")}
    if bad:
        click.echo(f"{len(bad)} job(s) not complete: {', '.join(f'{n} ({s})' for n, s in bad.items())}; "
                   "fix and rerun the same command", err=True)
        sys.exit(1)
    click.echo(f"all {len(states)} jobs complete" + (f"; Table 3 -> {Path(out) / 'report' / 'table3.md'}"
                                                     if any(j.kind == "evaluate" for j in mine) else ""))


if __name__ == "__main__":  # pragma: no cover
    main()
