"""The CLI surface, the configs and the README/CI contract."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from tfflannel.cli import main
from tfflannel.config import ExperimentConfig, load_config

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
