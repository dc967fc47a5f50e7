"""Base-learner commands: `train-patch`, `train-global`, `predict-base`, `import-weights`."""

from __future__ import annotations

from pathlib import Path

import click

from tfflannel.backbone_names import BACKBONE_NAMES, TORCHVISION_BACKBONE_NAMES
from tfflannel.cli.common import check_fold, config_options, load_cli_config, reports_input_errors


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


def _train_learner(kind, backbone, fold, data, out, epochs, weights, batch_size, mixed_precision, force, config_path,
                   overrides):
    from tfflannel.config import validate
    from tfflannel.learners.train import train_global_learner, train_patch_learner

    check_fold(data, fold)
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
    trainer(config, backbone, fold, data, out, weights=weights, force=force, echo=click.echo)
    click.echo(f"model -> {Path(out) / 'model.keras'}; history -> {Path(out) / 'history.csv'}")


@click.command("train-patch")
@learner_options("configs/patched.yaml")
@reports_input_errors
def train_patch(**options):
    """Train a Patched FLANNEL base learner on random lung-centred patches of the masked-image cache."""
    _train_learner("patch", **options)


@click.command("train-global")
@learner_options("configs/global.yaml")
@reports_input_errors
def train_global(**options):
    """Train an original-FLANNEL whole-image base learner (resize 336, random crop, flip)."""
    _train_learner("global", **options)


@click.command("predict-base")
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


@click.command("import-weights")
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


COMMANDS = (train_patch, train_global, predict_base_command, import_weights_command)
