"""Command-line interface: one thin command per pipeline stage.

Each command parses its options, loads the config, calls one library function
and prints where the outputs went. TensorFlow is imported inside the commands
that need it, so `--help` and data preparation stay fast.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import click

from tfflannel import DISCLAIMER


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
        except (DatasetError, ImageReadError, FileNotFoundError, ValueError) as error:
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


def load_cli_config(config_path, overrides, default_config=None):
    """Load the config; a default path that does not exist (installed package) means built-in defaults."""
    from tfflannel.config import load_config

    if config_path and config_path == default_config and not Path(config_path).exists():
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


if __name__ == "__main__":  # pragma: no cover
    main()
