"""One dataclass tree holds every default; a YAML file or `--set` is only a diff.

`load_config("configs/segmentation.yaml", ["segmentation.epochs=5"])` starts
from the defaults below, applies the file, then the overrides, and rejects any
unknown key with a did-you-mean hint, so a typo never silently trains with a
default.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml


@dataclass
class DataConfig:
    """Manifest and split settings (prepare-data)."""

    seed: int = 0
    folds: int = 5
    test_size: float = 0.2
    fungal_as_bacterial: bool = False


@dataclass
class SegmentationConfig:
    """FC-DenseNet lung segmenter: architecture, recipe and mask quality control."""

    model: str = "fcdn103"
    input_size: int = 256
    classes: str = "lung"
    epochs: int = 100
    batch_size: int = 2
    learning_rate: float = 1e-4
    weight_decay: float = 1e-6
    background_weight: float = 0.5
    lr_schedule: str = "milestones"
    lr_milestones: tuple = (0.7, 0.8, 0.9)
    plateau_patience: int = 10
    early_stopping_patience: int = 0
    bn_momentum: float = 0.9
    dropout: float = 0.2
    precise_bn: bool = True
    precise_bn_batch: int = 8
    eval_every: int = 1
    augment: bool = True
    validation_share: float = 0.2
    seed: int = 0
    cache_size: int = 1024
    keep_aspect: bool = True
    min_lung_fraction: float = 0.08
    max_lung_fraction: float = 0.65
    shard_size: int = 64
    inference_batch: int = 8


@dataclass
class PatchedConfig:
    """Patch base learners (train-patch): the Patched FLANNEL recipe."""

    patch_size: int = 0              # 0: the backbone's native size (299 for InceptionV3, else 224)
    patches_per_image: int = 1
    batch_size: int = 16
    epochs: int = 100
    learning_rate: float = 1e-5
    weight_decay: float = 1e-4
    l1: float = 0.0
    bn_momentum: float = 0.9
    dropout: float = 0.0
    augment: bool = True
    val_patches: int = 8
    precise_bn_batches: int = 8      # recompute BN statistics over this many training batches before validation
    early_stopping_patience: int = 20
    images_per_batch: int = 4
    seed: int = 0


@dataclass
class PatchesConfig:
    """The masked view the patch learners see (`segment` caches it, the export serves it)."""

    input: str = "equalized"         # equalized (histogram equalisation + gamma, as the original) | raw (grey film)


@dataclass
class GlobalConfig:
    """Whole-image base learners (train-global): the original FLANNEL recipe."""

    resize: int = 336
    crop_size: int = 0               # 0: the backbone's native size
    batch_size: int = 10
    epochs: int = 200
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    lr_milestones: tuple = (0.75, 1.125)   # 150 and 225 of 200 epochs, scaled to the epochs run
    bn_momentum: float = 0.9
    dropout: float = 0.0
    precise_bn_batches: int = 8
    early_stopping_patience: int = 0
    seed: int = 0


@dataclass
class InferenceConfig:
    """predict-base: K patches per image classified in batched forward passes."""

    k: int = 100
    images_per_batch: int = 4
    seed: int = 0


@dataclass
class EnsembleConfig:
    """FLANNEL ensemble (train-ensemble): the original recipe, fitted out-of-fold by default."""

    kind: str = "genet"              # genet | flannel | mlp
    score: str = "prob"              # prob (mean softmax, what the paper fed) | vote (vote fractions)
    fit_on: str = "valid"            # valid (out-of-fold) | train (in-sample, as the original)
    holdout_share: float = 0.25      # share of the fit patients held out for checkpoint selection
    gamma: float = 10.0              # focal-loss gamma of the original code (the focal-loss paper: 2)
    learning_rate: float = 1e-5
    weight_decay: float = 1e-4
    lr_milestones: tuple = (50,)     # epochs at which lr x 0.1
    epochs: int = 200
    batch_size: int = 20
    seed: int = 0


@dataclass
class DemoConfig:
    """`demo`: which learners to train on the bundled sample, and for how long."""

    backbones: tuple = ("mobilenet_v2", "resnet50")
    fold: int = 1
    patch_epochs: int = 3
    global_epochs: int = 3


@dataclass
class RuntimeConfig:
    """Where and how training runs."""

    strategy: str = "auto"           # auto (MirroredStrategy if > 1 GPU) | mirrored | default
    mixed_precision: bool = False


@dataclass
class ExperimentConfig:
    """Every stage's settings; a run writes the resolved tree as config.yaml."""

    data: DataConfig = field(default_factory=DataConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    patched: PatchedConfig = field(default_factory=PatchedConfig)
    global_learner: GlobalConfig = field(default_factory=GlobalConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    patches: PatchesConfig = field(default_factory=PatchesConfig)


def _coerce(value, default, where):
    if isinstance(default, bool):
        if isinstance(value, str):
            lowered = value.lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false. Received: {value!r}.")
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list. Received: {value!r}.")
        return tuple(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            number = float(value) if isinstance(default, float) else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number. Received: {value!r}.") from None
        return number
    if default is None or isinstance(default, str):
        return None if value is None else str(value)
    return value


def _apply(section, values, source, prefix=""):
    names = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"valid keys: {sorted(prefix + n for n in names)}"
            raise ValueError(f"{source}: unknown key '{dotted}'; {hint}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{source}: '{dotted}' must be a mapping. Received: {value!r}.")
            _apply(current, value, source, f"{dotted}.")
        else:
            setattr(section, key, _coerce(value, current, f"{source}: '{dotted}'"))


def load_config(path: Optional[str | Path] = None, overrides=()) -> ExperimentConfig:
    """Defaults, then a YAML diff, then `key.sub=value` overrides.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: an unknown key or a value of the wrong type; the message names
            the file and the key.
    """
    config = ExperimentConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config file must be a mapping of sections")
        _apply(config, values, str(path))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        nested = value
        for part in reversed(dotted.strip().split(".")):
            nested = {part: nested}
        _apply(config, nested, "--set")
    return config


def dump_config(config, path):
    """Write the resolved config as YAML atomically."""
    from tfflannel.utils import write_text_atomic

    data = _plain(dataclasses.asdict(config))
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
