"""Lung segmentation commands: `train-seg`, `evaluate-seg`, `segment`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from tfflannel.backbone_names import SEGMENTER_NAMES
from tfflannel.cli.common import config_options, load_cli_config, parse_shard, reports_input_errors


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


@click.command("train-seg")
@click.option("--pairs", type=click.Path(exists=True),
              help="Folder (images/ + masks/) or CSV (image,mask[,patient_id]) of pairs; mask > 0 is lung.")
@click.option("--jsrt", type=click.Path(file_okay=False), help="JSRT folder of raw .IMG films (with --scr).")
@click.option("--scr", type=click.Path(file_okay=False), help="SCR masks folder ({heart,left lung,right lung}/*.gif).")
@click.option("--montgomery", type=click.Path(file_okay=False), help="Montgomery County set (CXR_png/ + ManualMask/).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Run directory (model.keras, config.yaml, metrics.json, logs/).")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs  [default: segmentation.epochs].")
@click.option("--model", "preset", type=click.Choice(SEGMENTER_NAMES),
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


@click.command("evaluate-seg")
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


@click.command("segment")
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
    summary = build_cache(data, load_segmenter(model_path), CacheSettings.from_config(config), parse_shard(shard))
    click.echo(json.dumps(summary, indent=2))
    if summary["errors"]:
        click.echo(f"warning: {summary['errors']} image(s) could not be read; see {summary['cache']}/errors.csv",
                   err=True)
    if summary["complete"]:
        click.echo(f"index -> {summary['cache']}/index.csv; masks at a glance -> {summary['cache']}/qc.png")


COMMANDS = (train_seg, evaluate_seg, segment)
