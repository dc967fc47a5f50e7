"""Command-line interface: the `tfflannel` group; one module of thin commands per pipeline stage.

Each command parses its options, loads the config, calls one library function
and prints where the outputs went. TensorFlow is imported inside the commands
that need it (`tests/test_cli.py` checks that importing this module imports
neither TensorFlow nor Keras), so `--help` and data preparation stay fast.

Exit codes: 0 success; 1 some input files could not be processed (`predict`),
or a bug (with its traceback); 2 bad input: a missing or malformed file, an
option or config value out of range (`tfflannel.errors.InputError`).
"""

from __future__ import annotations

import os

import click

from tfflannel import __version__
from tfflannel.cli import data, ensemble, learners, segmentation, serving, study
from tfflannel.cli.common import _quiet_stderr, set_verbosity


def _print_version(ctx, _param, value):
    """`--version`: tfflannel, TensorFlow and Keras versions, from package metadata (TensorFlow is not imported).

    `-v --version` also imports TensorFlow to name Keras' backend and list the visible GPUs.
    """
    if not value or ctx.resilient_parsing:
        return
    from importlib.metadata import PackageNotFoundError, version

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    click.echo(f"tfflannel {__version__}")
    if not ctx.params.get("verbose"):
        click.echo(f"TensorFlow {installed('tensorflow')}, Keras {installed('keras')}")
        click.echo("GPU: not checked (tfflannel -v --version imports TensorFlow and lists the visible GPUs)")
        ctx.exit()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _quiet_stderr():
        import keras
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    click.echo(f"TensorFlow {tf.__version__}, Keras {keras.__version__} (backend {keras.backend.backend()})")
    click.echo(f"GPU: {', '.join(gpu.name for gpu in gpus) if gpus else 'none visible'}")
    ctx.exit()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, is_eager=True,
              help="More log output (-v info and TensorFlow's own logs, -vv debug).")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the tfflannel, TensorFlow and Keras versions, then exit (-v --version: also the visible "
                   "GPUs; imports TensorFlow).")
def main(verbose):
    """tfflannel: Patched FLANNEL chest X-ray classification (research use only).

    Stages, in order: prepare-data -> segment -> train-patch / train-global ->
    predict-base -> train-ensemble -> evaluate.

    Exit codes: 0 done; 1 some input files failed (predict) or an internal error; 2 bad input.
    """
    set_verbosity(verbose)

for _module in (data, segmentation, learners, ensemble, serving, study):
    for _command in _module.COMMANDS:
        main.add_command(_command)
