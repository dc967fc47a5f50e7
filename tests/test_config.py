"""Config validation: every bad value is a ConfigError naming the key and the allowed values, before any work."""

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from tfflannel.config import (
    ExperimentConfig,
    Range,
    load_config,
    packaged_config,
    validate,
)
from tfflannel.config_fields import field_types
from tfflannel.errors import ConfigError, InputError

REPO = Path(__file__).resolve().parents[1]
PACKAGED = sorted(Path(str(packaged_config("data.yaml"))).parent.glob("*.yaml"))


def _fields(kind):
    """(dotted key, Literal choices or Range) of every leaf field with that kind of rule, from the annotations."""
    found, defaults = [], ExperimentConfig()
    for section in dataclasses.fields(ExperimentConfig):
        for name, annotation in field_types(type(getattr(defaults, section.name))).items():
            origin = typing.get_origin(annotation)
            if kind == "literal" and origin is typing.Literal:
                found.append((f"{section.name}.{name}", typing.get_args(annotation)))
            if kind == "range" and origin is typing.Annotated:
                for rule in typing.get_args(annotation)[1:]:
                    if isinstance(rule, Range):
                        found.append((f"{section.name}.{name}", rule))
    return found


def test_packaged_configs_are_the_only_copies():
    assert [p.name for p in PACKAGED] == ["baselines.yaml", "data.yaml", "demo.yaml", "ensemble.yaml",
                                          "flannel_torchvision.yaml", "global.yaml", "patched.yaml",
                                          "segmentation.yaml", "segmenter_shipped.yaml"]
    for path in PACKAGED:
        user_copy = REPO / "configs" / path.name
        if user_copy.exists():                   # a checkout: configs/ links to the package files
            assert user_copy.resolve() == path.resolve()


@pytest.mark.parametrize("path", PACKAGED, ids=lambda p: p.name)
def test_every_packaged_config_validates(path):
    assert isinstance(validate(load_config(path)), ExperimentConfig)


def test_unknown_packaged_config_lists_the_known_ones():
    with pytest.raises(FileNotFoundError, match=r"packaged: \['baselines.yaml', 'data.yaml'"):
        packaged_config("nope.yaml")


@pytest.mark.parametrize("key,choices", _fields("literal"), ids=lambda v: v if isinstance(v, str) else "")
def test_enumerated_fields_accept_their_choices_only(key, choices):
    for choice in choices:
        config = load_config(overrides=[f"{key}={choice}"])
        assert getattr(getattr(config, key.split(".")[0]), key.split(".")[1]) == choice
    with pytest.raises(ConfigError, match=rf"'{key}' must be one of \[.*'{choices[0]}'.*\]. Received: 'bogus'"
                       if isinstance(choices[0], str) else rf"'{key}': expected true or false. Received: 'bogus'"):
        load_config(overrides=[f"{key}=bogus"])
    if choices == (True,):                                    # a setting with one supported value
        with pytest.raises(ConfigError, match=rf"'{key}' must be one of \[True\]. Received: False"):
            load_config(overrides=[f"{key}=false"])


def test_the_issue_s_enumerated_fields_are_covered():
    keys = {key for key, _ in _fields("literal")}
    assert {"segmentation.lr_schedule", "segmentation.classes", "segmentation.model", "ensemble.score",
            "ensemble.fit_on", "ensemble.kind", "runtime.strategy"} <= keys


@pytest.mark.parametrize("key,rule", _fields("range"), ids=lambda v: v if isinstance(v, str) else "")
def test_range_fields_reject_values_outside(key, rule):
    if rule.low is None:
        pytest.skip("no lower bound")
    below = rule.low if rule.low_open else rule.low - 1
    with pytest.raises(ConfigError, match=rf"--set: '{key}' must be {re.escape(rule.describe())}. Received: "):
        load_config(overrides=[f"{key}={below}"])


@pytest.mark.parametrize("key", ["inference.k", "patched.epochs", "patched.batch_size", "patched.patches_per_image",
                                 "global_learner.epochs", "global_learner.batch_size", "segmentation.epochs",
                                 "segmentation.batch_size", "ensemble.epochs", "ensemble.batch_size"])
def test_counts_must_be_at_least_one(key):
    with pytest.raises(ConfigError, match=rf"'{key}' must be >= 1. Received: 0."):
        load_config(overrides=[f"{key}=0"])
    assert load_config(overrides=[f"{key}=1"])


def test_bad_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("ensemble:\n  score: votes\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: 'ensemble.score' must be one of \['prob', 'vote'\]\. "
                                          r"Received: 'votes'\. Did you mean 'vote'\?"):
        load_config(path)


def test_list_items_are_checked():
    with pytest.raises(ConfigError, match=r"'demo.backbones'\[1\] must be one of .*'resnet50'.*Received: 'resnet5'"):
        load_config(overrides=["demo.backbones=[mobilenet_v2, resnet5]"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  seed: 1\n  folds: [3\n")
    with pytest.raises(ConfigError, match=r"broken.yaml, line \d+, column \d+: invalid YAML"):
        load_config(path)


def test_python_tag_is_rejected_and_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "tagged.yaml"
    path.write_text(f"data:\n  seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"tagged.yaml, line 2, column 9: invalid YAML: could not determine a "
                                          r"constructor for the tag"):
        load_config(path)
    assert not marker.exists()


def test_values_set_in_code_are_checked_by_validate():
    config = load_config()
    config.patched.epochs = 0
    with pytest.raises(ConfigError, match=r"options: 'patched.epochs' must be >= 1. Received: 0."):
        validate(config, "options")


def test_cross_field_restriction():
    with pytest.raises(ConfigError, match="segmentation.min_lung_fraction < segmentation.max_lung_fraction"):
        load_config(overrides=["segmentation.min_lung_fraction=0.7"])


def test_config_errors_are_input_errors_and_value_errors():
    assert issubclass(ConfigError, InputError) and issubclass(InputError, ValueError)


@pytest.mark.parametrize("rule,inside,outside,words", [
    (Range(1), [1, 10**9], [0, -1], ">= 1"),
    (Range(0, low_open=True), [1e-12, 5.0], [0.0, -1.0], "> 0"),
    (Range(0, 0.5, low_open=True), [0.2, 0.5], [0.0, 0.51], "in (0, 0.5]"),
    (Range(0, 1, high_open=True), [0.0, 0.99], [1.0, -0.1], "in [0, 1)"),
])
def test_range_rule(rule, inside, outside, words):
    assert all(rule.contains(v) for v in inside) and not any(rule.contains(v) for v in outside)
    assert rule.describe() == words


def test_a_removed_setting_is_refused_with_its_reason(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("segmentation:\n  keep_aspect: true\n")
    with pytest.raises(ConfigError, match=r"old.yaml: 'segmentation.keep_aspect' was removed in 0.3: films are "
                                          r"always letterboxed"):
        load_config(path)
    with pytest.raises(ConfigError, match="keep_aspect' was removed"):
        load_config(None, ["segmentation.keep_aspect=false"])


def test_patches_input_is_checked_when_the_config_is_loaded():
    with pytest.raises(ConfigError, match=r"'patches.input' must be one of \['equalized', 'raw'\]. Received: 'rwa'. "
                                          r"Did you mean 'raw'\?"):
        load_config(None, ["patches.input=rwa"])


def test_every_lr_milestone_is_a_fraction_of_the_run():
    """One meaning everywhere: ensemble, global learners and the segmenter scale fractions by their epochs."""
    from tfflannel.schedules import scale_milestones

    config = load_config()
    assert scale_milestones(config.ensemble.lr_milestones, config.ensemble.epochs) == (50,)   # the original's epoch 50
    assert scale_milestones(config.global_learner.lr_milestones, config.global_learner.epochs) == (150, 225)
    assert scale_milestones(config.segmentation.lr_milestones, config.segmentation.epochs) == (70, 80, 90)


def test_a_runs_own_config_is_read_with_settings_removed_since_dropped_while_a_users_config_is_refused(tmp_path):
    from tfflannel.errors import ConfigError
    from tfflannel.run_info import load_run_config

    assert load_run_config(tmp_path) == load_config()                   # no config.yaml: the defaults
    (tmp_path / "config.yaml").write_text("segmentation:\n  input_size: 128\n  keep_aspect: true\n  classes: jsrt\n")
    settings = load_run_config(tmp_path).segmentation
    assert (settings.input_size, settings.classes) == (128, "jsrt")
    with pytest.raises(ConfigError, match="keep_aspect"):
        load_config(tmp_path / "config.yaml")
    (tmp_path / "config.yaml").write_text("segmentation:\n  input_size: 8\n")
    with pytest.raises(ConfigError, match="config.yaml"):
        load_run_config(tmp_path)
