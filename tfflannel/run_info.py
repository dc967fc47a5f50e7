"""The run contract: what a run directory's `run.yaml` holds, read and written in one place.

Every stage that makes a run (train-patch, train-global, train-ensemble) writes a `RunInfo`; every
stage that reads one (predict-base, train-ensemble, evaluate, export, explain) loads it with
`load_run_info`. Paths are stored relative to the run directory, so a run folder can be moved
together with its work directory (absolute paths written by older versions still load).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tfflannel.errors import InputError
from tfflannel.utils import file_sha256, write_text_atomic

RUN_KINDS = ("patch", "global", "ensemble")
RUN_FILE = "run.yaml"


@dataclass
class RunInfo:
    """What made a run, as stored in its `run.yaml`.

    Args:
        kind: str. `patch`, `global` or `ensemble`.
        fold: int. The validation fold of the run.
        workdir: str. The work directory (manifest.csv, cache/), relative to the run directory.
        backbone: str. Backbone name of a base learner; `None` for an ensemble.
        input_size: int. Side of the learner's input (patch or crop); `None` for an ensemble.
        resize: int. Letterbox side before the centre crop of a global learner, else `None`.
        k: int. Patches per image: for a base learner the K of its validation during training (1 for
            global runs); for an ensemble the K of the base-learner predictions it was fit on.
        seed: int. The seed of the run (weight init, epoch random state; for ensembles the hold-out split).
        config: str. The full configuration file, relative to the run. Defaults to `config.yaml`.
        name: str. Display name; defaults to `kind:backbone`.
        runs: list of str. An ensemble's base-learner runs in input order, relative to the ensemble run.
        learners: list of str. Display names of `runs`.
        score: str. Which prediction columns an ensemble reads (`prob` or `vote`).
        fit_on: str. Which partition an ensemble was fit on (`valid` or `train`).
        manifest_sha256: str. SHA-256 of the manifest.csv the run was made from.
        cache_key: dict. A patch run's `cache/cache.json` key when it was trained (segmenter fingerprint, view
            size, QC bounds, patches.input); serving checks it (`serving.checks.check_runs_match`).
    """

    kind: str
    fold: int
    workdir: str
    backbone: str | None = None
    input_size: int | None = None
    resize: int | None = None
    k: int | None = None
    seed: int = 0
    config: str = "config.yaml"
    name: str | None = None
    runs: list = field(default_factory=list)
    learners: list = field(default_factory=list)
    score: str | None = None
    fit_on: str | None = None
    manifest_sha256: str | None = None
    cache_key: dict | None = None

    def __post_init__(self):
        if self.kind not in RUN_KINDS:
            raise InputError(f"run kind must be one of {list(RUN_KINDS)}. Received: kind={self.kind!r}.")
        try:
            self.fold = int(self.fold)
        except (TypeError, ValueError):
            raise InputError(f"run fold must be a whole number. Received: fold={self.fold!r}.") from None

    @property
    def display_name(self):
        """`name` if set, else `kind:backbone`."""
        return self.name or f"{self.kind}:{self.backbone or ''}"

    def workdir_path(self, run_dir):
        """The work directory as a path (resolved against `run_dir`)."""
        return Path(run_dir) / self.workdir

    def run_paths(self, run_dir):
        """An ensemble's base-learner run directories as paths (resolved against `run_dir`)."""
        return [Path(run_dir) / r for r in self.runs]

    def __getitem__(self, key):
        """Mapping-style read access (`info["input_size"]`) for callers written against the old dict."""
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def to_dict(self):
        """The fields as a plain dict, `None` values left out."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v != []}


def relative_to_run(path, run_dir):
    """`path` relative to `run_dir` (what run.yaml stores), via `..` where needed."""
    return os.path.relpath(Path(path).resolve(), Path(run_dir).resolve())


def manifest_sha256(workdir):
    """SHA-256 of WORKDIR/manifest.csv (the identity of the data, split and folds)."""
    return file_sha256(Path(workdir) / "manifest.csv")


def load_run_info(run_dir):
    """Read RUNDIR/run.yaml.

    Args:
        run_dir: str or Path. A run directory.

    Returns:
        RunInfo.

    Raises:
        FileNotFoundError: no run.yaml.
        InputError: run.yaml is not a mapping, misses a required key or has an unknown one.
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {run_dir} is not a train-patch, train-global or train-ensemble run")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise InputError(f"{path}: invalid YAML ({error})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping of run fields")
    names = {f.name for f in dataclasses.fields(RunInfo)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"{path}: unknown key(s) {unknown}; known: {sorted(names)}")
    missing = sorted({"kind", "fold", "workdir"} - set(data))
    if missing:
        raise InputError(f"{path}: missing key(s) {missing}")
    return RunInfo(**data)


def save_run_info(run_dir, info):
    """Write RUNDIR/run.yaml atomically from a RunInfo."""
    write_text_atomic(Path(run_dir) / RUN_FILE, yaml.safe_dump(info.to_dict(), sort_keys=False))


def load_run_config(run_dir):
    """The config a run was made with (RUNDIR/config.yaml, written by `dump_config`); the defaults if it has none.

    Settings removed since the run was made (`REMOVED_KEYS`) are dropped from the run's own record instead of refused:
    the file is what an older version wrote, not a choice the user can edit away.

    Args:
        run_dir: str or Path. A run directory of train-patch, train-global, train-seg or train-ensemble.

    Returns:
        ExperimentConfig.

    Raises:
        ConfigError: the file is not valid YAML or holds an unknown key or a bad value (naming the file).
    """
    from tfflannel.config import REMOVED_KEYS, ExperimentConfig, validate
    from tfflannel.config_fields import apply_values, read_yaml
    from tfflannel.errors import ConfigError

    path = Path(run_dir) / "config.yaml"
    config = ExperimentConfig()
    if not path.is_file():
        return config
    values = read_yaml(path.read_text(), str(path)) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections")
    for dotted in REMOVED_KEYS:
        section, key = dotted.split(".", 1)
        if isinstance(values.get(section), dict):
            values[section].pop(key, None)
    apply_values(config, values, str(path), REMOVED_KEYS)
    return validate(config, str(path))
