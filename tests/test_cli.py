"""The CLI surface, the configs and the README/CI contract."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import tfflannel
from tfflannel.backbone_names import BACKBONE_NAMES
from tfflannel.cli import main
from tfflannel.cli.common import BadInput, reports_input_errors
from tfflannel.config import ExperimentConfig, load_config
from tfflannel.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "prepare-data" in result.output


def test_prepare_data_help_documents_every_option():
    result = CliRunner().invoke(main, ["prepare-data", "--help"])
    assert result.exit_code == 0
    command = main.commands["prepare-data"]
    for param in command.params:
        for opt in param.opts:
            assert opt in result.output
        assert param.help, f"{param.name} has no help text"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads(path):
    assert isinstance(load_config(path), ExperimentConfig)
    assert "/home/" not in path.read_text() and "/work/" not in path.read_text()


def test_unknown_config_key_names_file_and_suggests(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  sed: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown key 'data.sed'; did you mean 'data.seed'"):
        load_config(path)
    with pytest.raises(ValueError, match="expected a whole number"):
        load_config(overrides=["data.folds=many"])


def test_ci_runs_readme_test_command():
    readme = (REPO / "README.md").read_text().splitlines()
    commands = [line.strip() for line in readme if line.strip().startswith("python3 -m venv")]
    assert len(commands) == 2, "README keeps exactly two set-up commands at the top"
    test_command = commands[1].split("&&")[-1].strip()
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in [line.strip() for line in ci]


def _run_cli(args, env_drop=(), timeout=300):
    """Run `python cli.py ARGS` in a fresh interpreter, as a user would; returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(REPO / "cli.py"), *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=timeout)


def test_import_and_every_help_leave_tensorflow_and_keras_unimported():
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from tfflannel.cli import main\n"
        "for name in [None, *main.commands]:\n"
        "    result = CliRunner().invoke(main, [name, '--help'] if name else ['--help'])\n"
        "    assert result.exit_code == 0, (name, result.output)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_backbone_choices_equal_the_registry():
    from tfflannel.models.backbones import list_backbones

    assert list(BACKBONE_NAMES) == list_backbones()
    for command in ("train-patch", "train-global"):
        option = next(p for p in main.commands[command].params if p.name == "backbone")
        assert list(option.type.choices) == list_backbones()


def test_segmenter_choices_equal_the_fc_densenet_presets():
    from tfflannel.backbone_names import SEGMENTER_NAMES
    from tfflannel.models.fc_densenet import FC_DENSENET_PRESETS

    assert list(SEGMENTER_NAMES) == sorted(FC_DENSENET_PRESETS)
    option = next(p for p in main.commands["train-seg"].params if p.name == "preset")
    assert list(option.type.choices) == sorted(FC_DENSENET_PRESETS)


def test_import_weights_choices_equal_the_mappable_backbones():
    from tfflannel.backbone_names import TORCHVISION_BACKBONE_NAMES
    from tfflannel.models.torch_layout import importable_backbones

    assert sorted(TORCHVISION_BACKBONE_NAMES) == importable_backbones()
    option = next(p for p in main.commands["import-weights"].params if p.name == "backbone")
    assert sorted(option.type.choices) == importable_backbones()


@pytest.mark.parametrize("args,option", [
    (["predict-base", "--run", "{tmp}", "--k", "0"], "--k"),
    (["train-patch", "--backbone", "mobilenet_v2", "--fold", "1", "--data", "{tmp}", "--out", "{tmp}/r",
      "--epochs", "0"], "--epochs"),
    (["train-global", "--backbone", "mobilenet_v2", "--fold", "1", "--data", "{tmp}", "--out", "{tmp}/r",
      "--batch-size", "0"], "--batch-size"),
    (["train-patch", "--backbone", "mobilenet_v2", "--fold", "0", "--data", "{tmp}", "--out", "{tmp}/r"], "--fold"),
    (["train-seg", "--pairs", "{tmp}", "--out", "{tmp}/r", "--epochs", "0"], "--epochs"),
    (["prepare-data", "--sample", "--out", "{tmp}/w", "--folds", "1"], "--folds"),
    (["prepare-data", "--sample", "--out", "{tmp}/w", "--test-size", "0"], "--test-size"),
], ids=["k", "epochs", "batch-size", "fold0", "seg-epochs", "folds", "test-size"])
def test_out_of_range_options_exit_2_naming_the_option(tmp_path, args, option):
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert not (tmp_path / "r").exists() and not (tmp_path / "w").exists()


def test_set_k_zero_is_refused_before_work(tmp_path):
    result = CliRunner().invoke(main, ["predict-base", "--run", str(tmp_path), "--set", "inference.k=0"])
    assert result.exit_code == 2, result.output
    assert "--set: 'inference.k' must be >= 1. Received: 0." in result.output
    assert not (tmp_path / "predictions").exists()


def test_fold_outside_the_manifest_exits_2_before_training(tmp_path, sample_cls_dir):
    from tfflannel.data.manifest import prepare_manifest

    prepare_manifest(tmp_path / "work", folders=[sample_cls_dir], folds=3, test_size=0.25, progress=False)
    result = CliRunner().invoke(main, ["train-patch", "--backbone", "mobilenet_v2", "--fold", "9", "--data",
                                       str(tmp_path / "work"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "Invalid value for --fold" in result.output and "has folds [1, 2, 3]. Received: 9." in result.output
    assert not (tmp_path / "run").exists()


def test_predict_on_an_empty_folder_exits_2(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    (tmp_path / "export").mkdir()
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "empty"), "--model", str(tmp_path / "export")])
    assert result.exit_code == 2, result.output
    assert "no image files" in result.output and str(tmp_path / "empty") in result.output


def test_yaml_error_in_config_exits_2_with_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  seed: [1\n")
    result = CliRunner().invoke(main, ["prepare-data", "--sample", "--out", str(tmp_path / "w"), "--config",
                                       str(path)])
    assert result.exit_code == 2, result.output
    assert re.search(r"broken.yaml, line \d+, column \d+: invalid YAML", result.output)
    assert "Traceback" not in result.output


def test_input_errors_exit_2_and_real_bugs_keep_their_traceback():
    @reports_input_errors
    def bad_input():
        raise InputError("x.csv: column 'label' missing")

    @reports_input_errors
    def bug():
        raise ValueError("operands could not be broadcast together")

    with pytest.raises(BadInput) as info:
        bad_input()
    assert info.value.exit_code == 2 and "x.csv" in info.value.message
    with pytest.raises(ValueError, match="broadcast"):
        bug()


def test_version_and_config_errors_answer_without_importing_tensorflow():
    """`--version` reads versions from package metadata; a bad --config/--set is refused before TensorFlow loads."""
    from importlib.metadata import version

    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from tfflannel.cli import main\n"
        "for args in (['--version'], ['predict-base', '--run', '.', '--set', 'inference.k=0'],\n"
        "             ['export', '--runs', '.', '--out', 'x', '--config', 'missing.yaml'],\n"
        "             ['train-patch', '--backbone', 'mobilenet_v2', '--fold', '1', '--data', '.', '--out', 'r',\n"
        "              '--set', 'patched.lerning_rate=1']):\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    print(result.exit_code, result.output.strip().replace(chr(10), ' | '))\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == (f"0 tfflannel {tfflannel.__version__} | TensorFlow {version('tensorflow')}, Keras "
                        f"{version('keras')} | GPU: not checked (tfflannel -v --version imports TensorFlow and lists "
                        f"the visible GPUs)")
    assert lines[1] == "2 Error: --set: 'inference.k' must be >= 1. Received: 0."
    assert lines[2] == "2 Error: missing.yaml: config file not found"
    assert lines[3].startswith("2 Error: ") and "did you mean 'patched.learning_rate'" in lines[3]
    assert lines[4] == "False False", "neither TensorFlow nor Keras was imported"


def test_verbose_version_lists_versions_and_gpus():
    import keras
    import tensorflow as tf

    result = CliRunner().invoke(main, ["-v", "--version"])
    assert result.exit_code == 0, result.output
    gpus = tf.config.list_physical_devices("GPU")
    assert result.output.splitlines() == [
        f"tfflannel {tfflannel.__version__}",
        f"TensorFlow {tf.__version__}, Keras {keras.__version__} (backend {keras.backend.backend()})",
        f"GPU: {', '.join(g.name for g in gpus) if gpus else 'none visible'}",
    ]


@pytest.mark.slow
def test_stderr_is_quiet_by_default_and_verbose_with_v(tmp_path):
    args = ["predict-base", "--run", str(tmp_path)]             # refused after TensorFlow was imported
    quiet = _run_cli(args, env_drop=("TF_CPP_MIN_LOG_LEVEL",))
    assert quiet.returncode == 2
    assert quiet.stderr.strip().splitlines() == [f"Error: {tmp_path / 'run.yaml'}: missing; {tmp_path} is not a "
                                                 f"train-patch, train-global or train-ensemble run"]
    verbose = _run_cli(["-v", *args], env_drop=("TF_CPP_MIN_LOG_LEVEL",))
    assert verbose.returncode == 2
    assert len(verbose.stderr.strip().splitlines()) > 1, "-v shows TensorFlow's own start-up log"


def test_cli_reference_is_up_to_date():
    """docs/cli.md is what the commands' --help prints (regenerate: python tools/make_cli_reference.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_cli_reference", REPO / "tools" / "make_cli_reference.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert (REPO / "docs" / "cli.md").read_text() == tool.render_reference(), (
        "docs/cli.md is out of date: run python tools/make_cli_reference.py")
