"""One dataclass tree holds every default; a YAML file or `--set` is only a diff.

`load_config("configs/segmentation.yaml", ["segmentation.epochs=5"])` starts
from the defaults below, applies the file, then the overrides, and rejects any
unknown key with a did-you-mean hint, so a typo never silently trains with a
default.

Every value is checked against its field's annotation as it is set (TF Model
Garden style): a `Literal[...]` field accepts only the listed values, and an
`Annotated[int, Range(1)]` field (`PositiveInt`, `Share`, ...) only values in the
range. A new field is validated by giving it such a type; `validate(config)`
re-checks the whole tree (after CLI options changed it) and the cross-field
`RESTRICTIONS`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml

from tfflannel.backbone_names import BACKBONE_NAMES, TORCHVISION_BACKBONE_NAMES
from tfflannel.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """The allowed interval of a numeric config field, used as `Annotated[int, Range(1)]`.

    Args:
        low: float or None. Lower bound; None for none. Defaults to `None`.
        high: float or None. Upper bound; None for none. Defaults to `None`.
        low_open: bool. Exclude `low` itself. Defaults to `False`.
        high_open: bool. Exclude `high` itself. Defaults to `False`.
    """

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value):
        """Whether `value` lies in the interval.

        Args:
            value: int or float. The value to test.

        Returns:
            bool. True when `value` satisfies both bounds (open bounds exclude the bound itself).
        """
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def describe(self):
        """The rule in words, e.g. `>= 1` or `in (0, 0.5]`, for error messages.

        Returns:
            str. The interval in words; assumes at least one bound is set.
        """
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Share = Annotated[float, Range(0, 1, high_open=True)]            # a share of something, 1 excluded
Probability = Annotated[float, Range(0, 1)]
Momentum = Annotated[float, Range(0, 1, high_open=True)]
BackboneName = Literal[BACKBONE_NAMES]
PATCH_INPUTS = ("equalized", "raw")
"""What the patch learners see: the histogram-equalised + gamma film (the original's) or the grey film."""

REMOVED_KEYS = {
    "segmentation.keep_aspect": "films are always letterboxed (padded, never stretched); delete the line",
}
"""Settings that existed once: a config that still sets one is refused with the reason instead of 'unknown key'."""


@dataclass
class DataConfig:
    """Manifest and split settings (prepare-data)."""

    seed: NonNegativeInt = 0
    folds: Annotated[int, Range(2)] = 5
    test_size: Annotated[float, Range(0, 0.5, low_open=True)] = 0.2
    fungal_as_bacterial: bool = False
    max_megapixels: PositiveFloat = 100.0      # larger images are rejected unread (decompression bombs)
    min_side: PositiveInt = 64                 # smaller images are rejected (too small to classify)
    link_max_distance: Annotated[int, Range(0, 64)] = 8     # dHash Hamming distance of a near-identical pair (64 bits)
    link_min_correlation: Annotated[float, Range(0, 1, low_open=True)] = 0.97  # thumbnail correlation confirming it
    test_sources: tuple[str, ...] = ()        # external validation: these sources are the test set, the rest is folded


@dataclass
class SegmentationConfig:
    """FC-DenseNet lung segmenter: architecture, recipe and mask quality control."""

    model: Literal["fcdn103", "fcdn67", "fcdn56", "fcdn_medium", "fcdn_small"] = "fcdn103"
    input_size: Annotated[int, Range(32)] = 256
    classes: Literal["lung", "jsrt"] = "lung"
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 2
    learning_rate: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 1e-6
    background_weight: NonNegativeFloat = 0.5
    loss: Literal["weighted_ce", "dice_weighted_ce"] = "weighted_ce"
    lr_schedule: Literal["milestones", "plateau"] = "milestones"
    lr_milestones: tuple = (0.7, 0.8, 0.9)
    plateau_patience: NonNegativeInt = 10
    early_stopping_patience: NonNegativeInt = 0
    bn_momentum: Momentum = 0.9
    dropout: Share = 0.2
    precise_bn: bool = True
    precise_bn_batch: PositiveInt = 8
    eval_every: PositiveInt = 1
    augment: bool = True
    augment_strength: Literal["standard", "strong"] = "standard"
    validation_share: Share = 0.2
    seed: NonNegativeInt = 0
    cache_size: PositiveInt = 1024
    min_lung_fraction: Probability = 0.08
    max_lung_fraction: Probability = 0.65
    min_mask_confidence: Probability = 0.0     # QC: mean max-probability inside the mask; 0: off
    max_flip_disagreement: Probability = 1.0   # QC: 1 - Jaccard(mask, mask of the mirror); 1: off
    shard_size: PositiveInt = 64
    inference_batch: PositiveInt = 8


@dataclass
class PatchedConfig:
    """Patch base learners (train-patch): the Patched FLANNEL recipe."""

    patch_size: NonNegativeInt = 0   # 0: the backbone's native size (299 for InceptionV3, else 224)
    patches_per_image: PositiveInt = 1
    batch_size: PositiveInt = 16
    epochs: PositiveInt = 100
    learning_rate: PositiveFloat = 1e-5
    weight_decay: NonNegativeFloat = 1e-4
    l1: NonNegativeFloat = 0.0
    bn_momentum: Momentum = 0.9
    dropout: Share = 0.0
    augment: bool = True
    augment_strength: Literal["standard", "strong"] = "standard"
    val_patches: PositiveInt = 8
    precise_bn_batches: NonNegativeInt = 8  # recompute BN statistics over this many training batches first
    early_stopping_patience: NonNegativeInt = 20
    images_per_batch: PositiveInt = 4
    seed: NonNegativeInt = 0
    head: Literal["reference", "gap"] = "reference"   # reference: torchvision's classifier, last Linear replaced
    grouped_conv: Literal["split", "grouped"] = "split"  # ResNeXt: split convs (CPU) | one grouped conv (GPU)
    aux_loss_weight: NonNegativeFloat = 0.4  # inception_v3_tv, reference head: loss = CE + w * CE(aux); 0: off


@dataclass
class PatchesConfig:
    """The masked view the patch learners see (`segment` caches it, the export serves it)."""

    input: Literal[PATCH_INPUTS] = "equalized"   # equalized (equalisation + gamma, as the original) | raw (grey film)


@dataclass
class GlobalConfig:
    """Whole-image base learners (train-global): the original FLANNEL recipe."""

    resize: PositiveInt = 336
    crop_size: NonNegativeInt = 0    # 0: the backbone's native size
    batch_size: PositiveInt = 10
    epochs: PositiveInt = 200
    learning_rate: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-4
    lr_milestones: tuple = (0.75, 1.125)   # 150 and 225 of 200 epochs, scaled to the epochs run
    bn_momentum: Momentum = 0.9
    dropout: Share = 0.0
    precise_bn_batches: NonNegativeInt = 8
    early_stopping_patience: NonNegativeInt = 0
    seed: NonNegativeInt = 0
    head: Literal["reference", "gap"] = "reference"   # reference: torchvision's classifier, last Linear replaced
    grouped_conv: Literal["split", "grouped"] = "split"  # ResNeXt: split convs (CPU) | one grouped conv (GPU)
    aux_loss_weight: NonNegativeFloat = 0.4  # inception_v3_tv, reference head: loss = CE + w * CE(aux); 0: off


@dataclass
class InferenceConfig:
    """predict-base: K patches per image classified in batched forward passes."""

    k: PositiveInt = 100
    images_per_batch: PositiveInt = 4
    seed: NonNegativeInt = 0


@dataclass
class EnsembleConfig:
    """FLANNEL ensemble (train-ensemble): the original recipe, fitted out-of-fold by default."""

    kind: Literal["genet", "flannel", "mlp"] = "genet"
    score: Literal["prob", "vote"] = "prob"  # prob (mean softmax, what the paper fed) | vote (vote fractions)
    fit_on: Literal["valid", "train"] = "valid"  # valid (out-of-fold) | train (in-sample, as the original)
    holdout_share: Share = 0.25      # share of the fit patients held out for checkpoint selection
    gamma: NonNegativeFloat = 10.0   # focal-loss gamma of the original code (the focal-loss paper: 2)
    learning_rate: PositiveFloat = 1e-5
    weight_decay: NonNegativeFloat = 1e-4
    lr_milestones: tuple = (0.25,)   # lr x 0.1 at these fractions of the epochs (epoch 50 of 200), as everywhere
    epochs: PositiveInt = 200
    batch_size: PositiveInt = 20
    seed: NonNegativeInt = 0
    # temperature: fit one T on validation films after the weights (served probabilities softmax(log p / T))
    calibration: Literal["temperature", "none"] = "temperature"


@dataclass
class DemoConfig:
    """`demo`: which learners to train on the bundled sample, and for how long."""

    backbones: tuple[BackboneName, ...] = ("mobilenet_v2", "resnet50")
    fold: PositiveInt = 1
    patch_epochs: PositiveInt = 3
    global_epochs: PositiveInt = 3


@dataclass
class StudyConfig:
    """`reproduce`: the base learners of the study (the paper's five, torchvision layout, by default)."""

    backbones: tuple[BackboneName, ...] = TORCHVISION_BACKBONE_NAMES
    # learners trained and evaluated on the same folds but not ensemble members (configs/baselines.yaml)
    baselines: tuple[BackboneName, ...] = ()


@dataclass
class RuntimeConfig:
    """Where and how training runs."""

    # auto: MultiWorkerMirroredStrategy if TF_CONFIG names > 1 worker, else MirroredStrategy if > 1 GPU
    strategy: Literal["auto", "mirrored", "multi_worker", "default"] = "auto"
    mixed_precision: bool = False
    deterministic: bool = False      # tf.config.experimental.enable_op_determinism(): bit-identical GPU reruns, slower


@dataclass
class AuditConfig:
    """`audit`: the shortcut rule's thresholds and the source probe (docs/evaluation.md)."""

    # A class is a shortcut class when F1(lungs_removed) >= kept_share * F1(normal) while
    # F1(normal) >= 2p / (1 + p) + min_gain (p: its prevalence among the films audited).
    kept_share: Annotated[float, Range(0, 1, low_open=True)] = 0.8
    min_gain: Annotated[float, Range(0, 1, high_open=True)] = 0.1
    probe_folds: Annotated[int, Range(2)] = 5           # patient-grouped CV folds of the source probe
    bootstrap_resamples: PositiveInt = 2000             # patient-bootstrap resamples of the probe's AUC
    seed: NonNegativeInt = 0                            # probe folds and bootstrap
    gradcam: bool = True                                # lung_attention of global learners (Grad-CAM)
    films_per_batch: PositiveInt = 16                   # films segmented and scored together


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
    study: StudyConfig = field(default_factory=StudyConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)


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
        raise ConfigError(f"{where}: expected true or false. Received: {value!r}.")
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list. Received: {value!r}.")
        return tuple(value)
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        try:
            number = float(value)
            if not isinstance(default, float):
                if number != int(number):
                    raise ValueError(value)
                number = int(number)
        except (TypeError, ValueError, OverflowError):
            kind = "a number" if isinstance(default, float) else "a whole number"
            raise ConfigError(f"{where}: expected {kind}. Received: {value!r}.") from None
        return number
    if default is None or isinstance(default, str):
        return None if value is None else str(value)
    return value


@functools.cache
def _field_types(cls):
    """{field name: annotation with its Annotated/Literal extras} of a config dataclass."""
    return typing.get_type_hints(cls, include_extras=True)


def _check_value(annotation, value, where):
    """Raise ConfigError when `value` breaks the Literal choices or Range of `annotation`."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *extras = typing.get_args(annotation)
        _check_value(base, value, where)
        for rule in extras:
            if isinstance(rule, Range) and not rule.contains(value):
                raise ConfigError(f"{where} must be {rule.describe()}. Received: {value!r}.")
    elif origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where} must be one of {list(choices)}. Received: {value!r}.{hint}")
    elif origin is tuple and isinstance(value, tuple):
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            for index, item in enumerate(value):
                _check_value(args[0], item, f"{where}[{index}]")


def _apply(section, values, source, prefix=""):
    names = {f.name for f in dataclasses.fields(section)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            if dotted in REMOVED_KEYS:
                raise ConfigError(f"{source}: '{dotted}' was removed in 0.3: {REMOVED_KEYS[dotted]}.")
            close = difflib.get_close_matches(key, names, n=1)
            if close:
                hint = f"did you mean '{prefix}{close[0]}'?"
            else:
                hint = f"valid keys: {sorted(prefix + n for n in names)}"
            raise ConfigError(f"{source}: unknown key '{dotted}'; {hint}")
        current = getattr(section, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{dotted}' must be a mapping. Received: {value!r}.")
            _apply(current, value, source, f"{dotted}.")
        else:
            value = _coerce(value, current, f"{source}: '{dotted}'")
            _check_value(_field_types(type(section))[key], value, f"{source}: '{dotted}'")
            setattr(section, key, value)


RESTRICTIONS = (
    ("segmentation.min_lung_fraction < segmentation.max_lung_fraction",
     lambda c: c.segmentation.min_lung_fraction < c.segmentation.max_lung_fraction),
    ("demo.fold <= data.folds", lambda c: c.demo.fold <= c.data.folds),
)
"""Cross-field rules `validate` checks, as (rule in words, predicate on the config)."""


def validate(config, source="config"):
    """Check every field of a config tree against its annotation, then the cross-field `RESTRICTIONS`.

    `load_config` calls it; call it again after changing values in code (CLI options such as `--epochs`).

    Args:
        config: ExperimentConfig. The tree to check.
        source: str. Where the values came from, for the message. Defaults to `"config"`.

    Returns:
        ExperimentConfig. `config` itself.

    Raises:
        ConfigError: a value outside its range or choices, or a broken restriction; the message names the key.
    """

    def walk(section, prefix):
        for item in dataclasses.fields(section):
            value = getattr(section, item.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{item.name}.")
            else:
                _check_value(_field_types(type(section))[item.name], value, f"{source}: '{prefix}{item.name}'")

    walk(config, "")
    for rule, holds in RESTRICTIONS:
        if not holds(config):
            raise ConfigError(f"{source}: {rule} must hold.")
    return config


def _safe_load(text, where):
    """yaml.safe_load with syntax errors (and python/* tags) reported as ConfigError with file and line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        position = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{where}{position}: invalid YAML: {problem}") from None


def load_config(path: Optional[str | Path] = None, overrides=()) -> ExperimentConfig:
    """Defaults, then a YAML diff, then `key.sub=value` overrides.

    Args:
        path: str, Path or None. YAML file: a mapping of sections, each a mapping of keys to override.
            Defaults to `None` (the built-in defaults only).
        overrides: iterable of str. `section.key=value` items (the CLI's `--set`), applied after the file.
            Defaults to `()`.

    Returns:
        ExperimentConfig. The validated config tree.

    Raises:
        FileNotFoundError: `path` does not exist.
        ConfigError: invalid YAML (with file, line and column), an unknown key, a value of the wrong type,
            outside its range or not one of its choices; the message names the file and the key.
    """
    config = ExperimentConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        values = _safe_load(path.read_text(), str(path)) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of sections")
        _apply(config, values, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        value = _safe_load(raw, f"--set {item!r}") if raw else ""
        nested = value
        for part in reversed(dotted.strip().split(".")):
            nested = {part: nested}
        _apply(config, nested, "--set")
    return validate(config, str(path) if path is not None and not overrides else "config")


def explicit_keys(path=None, overrides=()):
    """The dotted keys (`inference.k`) a YAML diff and `--set` items set, whatever their values.

    Lets a command tell a value the user chose from a default (e.g. serving takes K from the runs unless
    `inference.k` is set here). Call it after `load_config` accepted the same file and overrides.

    Args:
        path: str, Path or None. The YAML file the user gave (not a command's default config). Defaults to `None`.
        overrides: iterable of str. `section.key=value` items. Defaults to `()`.

    Returns:
        set of str.
    """
    keys = set()

    def walk(values, prefix):
        for name, value in values.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{name}.")
            else:
                keys.add(f"{prefix}{name}")

    if path is not None:
        walk(_safe_load(Path(path).read_text(), str(path)) or {}, "")
    keys.update(item.split("=", 1)[0].strip() for item in overrides if "=" in item)
    return keys


def packaged_config(name):
    """Path of a config shipped inside the package (`tfflannel/configs/NAME`), e.g. `packaged_config("demo.yaml")`.

    The top-level `configs/` of a checkout links to these files, so there is one copy of each.

    Args:
        name: str. File name in `tfflannel/configs/`.

    Returns:
        Path. The packaged file.

    Raises:
        FileNotFoundError: no packaged config of that name; the message lists those that exist.
    """
    from importlib.resources import files

    folder = files("tfflannel.configs")
    target = folder.joinpath(name)
    if not target.is_file():
        known = sorted(item.name for item in folder.iterdir() if item.name.endswith(".yaml"))
        raise FileNotFoundError(f"{name}: no such packaged config; packaged: {known}")
    return Path(str(target))


def dump_config(config, path):
    """Write the resolved config as YAML atomically.

    Args:
        config: ExperimentConfig. The tree to write; tuples become YAML lists, keys keep field order.
        path: str or `pathlib.Path`. Output file (written via `tfflannel.utils.write_text_atomic`);
            `load_config(path)` reads it back to an equal config.
    """
    from tfflannel.utils import write_text_atomic

    data = _plain(dataclasses.asdict(config))
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
