"""What every command shares: input-error handling, `--config`/`--set`, run lists, shards and folds."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from pathlib import Path

import click

from tfflannel.errors import InputError


class BadInput(click.ClickException):
    """Bad input (missing file, bad metadata or config, no images): a one-line message and exit code 2."""

    exit_code = 2


def reports_input_errors(command):
    """Turn the library's `InputError` and missing or clashing files into a clear message and exit code 2.

    Any other exception is a bug and keeps its traceback. Before the command runs, its `--config` and `--set`
    are loaded once (a config error answers at once, without TensorFlow), then TensorFlow is imported quietly
    (see `_quiet_tensorflow_import`), after the options were parsed, so `--help` never imports it.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        context = click.get_current_context(silent=True)
        try:
            _check_config_first(context, kwargs)
            _quiet_tensorflow_import(context)
            return command(*args, **kwargs)
        except (InputError, FileNotFoundError, FileExistsError) as error:
            raise BadInput(str(error)) from error

    return wrapper


def _check_config_first(context, kwargs):
    """Load a command's `--config`/`--set` before TensorFlow is imported, so their errors answer in a second."""
    if context is None or "config_path" not in kwargs or "overrides" not in kwargs:
        return
    option = next((p for p in context.command.params if p.name == "config_path"), None)
    load_cli_config(kwargs["config_path"], kwargs["overrides"], option.default if option is not None else None)


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


def explicit_config_keys(config_path, overrides):
    """The dotted config keys the user set: `--set` items, and the keys of `--config` when given (not its default)."""
    from click.core import ParameterSource

    from tfflannel.config import explicit_keys

    context = click.get_current_context()
    given = context.get_parameter_source("config_path") not in (ParameterSource.DEFAULT, None)
    return explicit_keys(config_path if given else None, overrides)


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


def set_verbosity(verbose):
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


def parse_shard(value):
    """`--shard I/N` as (I, N), refused with a clear message unless 1 <= I <= N."""
    try:
        part, parts = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"expected I/N such as 1/4. Received: {value!r}.", param_hint="--shard") from None
    if not 1 <= part <= parts:
        raise click.BadParameter(f"I must be between 1 and N. Received: {value!r}.", param_hint="--shard")
    return part, parts


def run_list(values):
    """`--runs a --runs b` and `--runs a,b` both name runs a and b."""
    runs = [item for value in values for item in value.split(",") if item]
    for run in runs:
        if not Path(run).is_dir():
            raise click.BadParameter(f"{run}: not a directory", param_hint="--runs")
    return runs


def served_runs(run_dirs, ensemble_dir):
    """The `--runs` of `export` / `predict`, refused (exit 2) if several come without an `--ensemble`."""
    runs = run_list(run_dirs)
    if len(runs) > 1 and not ensemble_dir:
        raise click.UsageError("several --runs need an --ensemble that combines them")
    return runs


def check_fold(data, fold):
    """--fold must be one of the validation folds in DATA/manifest.csv (checked before any work starts)."""
    from tfflannel.data.manifest import load_manifest, validation_folds

    manifest = Path(data) / "manifest.csv"
    if not manifest.is_file():
        raise BadInput(f"{manifest}: not found; run prepare-data --out {data} first")
    folds = validation_folds(load_manifest(manifest))
    if fold not in folds:
        raise click.BadParameter(f"{manifest} has folds {folds}. Received: {fold}.", param_hint="--fold")

