"""`prepare-data`: source folders -> manifest.csv with patient-grouped split and folds."""

from __future__ import annotations

from pathlib import Path

import click

from tfflannel import DISCLAIMER
from tfflannel.cli.common import config_options, load_cli_config, reports_input_errors


@click.command("prepare-data")
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
@click.option("--test-source", "test_sources", multiple=True,
              help="External validation: every film of this source is the test set, the rest is folded "
                   "(repeatable)  [default: data.test_sources = none].")
@config_options(None)
@reports_input_errors
def prepare_data(ccx, kcx, folders, sample, out, seed, folds, test_size, test_sources, config_path, overrides):
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
        test_sources=tuple(test_sources) or tuple(config.test_sources),
    )
    out = Path(out)
    click.echo(f"{len(rows)} images kept -> {out / 'manifest.csv'}")
    click.echo(f"rejections -> {out / 'rejected.csv'}; summary -> {out / 'statistics.md'}")
    click.echo(DISCLAIMER)


COMMANDS = (prepare_data,)
