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
`RESTRICTIONS`. The field types and the code that coerces and checks each value are in
`tfflannel.config_fields`; this module is the schema (every default) and its loading.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

import yaml

from tfflannel.backbone_names import BACKBONE_NAMES, SEGMENTER_NAMES, TORCHVISION_BACKBONE_NAMES
from tfflannel.config_fields import (
    Momentum,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Range,
    Share,
    apply_values,
    check_tree,
    read_yaml,
)
from tfflannel.errors import ConfigError

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

    model: Literal[SEGMENTER_NAMES] = "fcdn103"   # the FC-DenseNet presets (models/fc_densenet.py)
    input_size: Annotated[int, Range(32)] = 256
    classes: Literal["lung", "jsrt"] = "lung"
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 2
    learning_rate: PositiveFloat = 1e-4
    weight_decay: NonNegativeFloat = 1e-6
    background_weight: NonNegativeFloat = 0.5
    loss: Literal["weighted_ce", "dice_weighted_ce"] = "weighted_ce"
    lr_schedule: Literal["milestones", "plateau", "cosine"] = "milestones"   # cosine: schedules.cosine_decay
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
    # the grid's shards run at once (`reproduce --shard I/N`, one thread each); 2 overlaps one job's start-up
    # and tracing with another's arithmetic on a 2-core CPU
    shards: PositiveInt = 2


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
    check_tree(config, source)
    for rule, holds in RESTRICTIONS:
        if not holds(config):
            raise ConfigError(f"{source}: {rule} must hold.")
    return config


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
        values = read_yaml(path.read_text(), str(path)) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of sections")
        apply_values(config, values, str(path), REMOVED_KEYS)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        dotted, raw = item.split("=", 1)
        value = read_yaml(raw, f"--set {item!r}") if raw else ""
        nested = value
        for part in reversed(dotted.strip().split(".")):
            nested = {part: nested}
        apply_values(config, nested, "--set", REMOVED_KEYS)
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
        walk(read_yaml(Path(path).read_text(), str(path)) or {}, "")
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
