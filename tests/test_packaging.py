"""The built wheel installs and runs outside the checkout: configs are package data, one version string."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import tfflannel

REPO = Path(__file__).resolve().parents[1]


def _run(args, cwd, **kwargs):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the wheel from a copy of the sources and install it, without network, into a fresh venv.

    The venv sees this interpreter's site-packages for the dependencies through a plain path in a `.pth` file
    (so their `.pth` files, such as an editable install of tfflannel, stay inactive); tfflannel comes from the
    wheel only.
    """
    if importlib.util.find_spec("setuptools") is None or importlib.util.find_spec("wheel") is None:
        pytest.skip("building the wheel offline needs setuptools and wheel (pip install -e '.[dev]')")
    root = tmp_path_factory.mktemp("packaging")
    source = root / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "tfflannel", source / "tfflannel", ignore=shutil.ignore_patterns("__pycache__"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(root / "dist"), str(source)], cwd=root)
    (wheel,) = (root / "dist").glob("tfflannel-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    dependencies = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib.stdout.strip()) / "_tfflannel_test_dependencies.pth").write_text("\n".join(sorted(dependencies)))
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q",
          str(wheel)], cwd=root)
    return wheel, venv, root


def test_wheel_holds_the_configs_and_one_version(installed):
    import zipfile

    wheel, _, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    packaged = sorted(n for n in names if n.startswith("tfflannel/configs/") and n.endswith(".yaml"))
    shipped = sorted(p.name for p in (REPO / "tfflannel/configs").glob("*.yaml"))
    assert [n.rsplit("/", 1)[1] for n in packaged] == shipped
    assert wheel.name.startswith(f"tfflannel-{tfflannel.__version__}-")


def test_installed_wheel_runs_outside_the_checkout(installed):
    _, venv, root = installed
    version = _run([str(venv / "bin" / "tfflannel"), "--version"], cwd=root)
    assert version.stdout.splitlines()[0] == f"tfflannel {tfflannel.__version__}"
    assert "TensorFlow" in version.stdout and "Keras" in version.stdout and "GPU:" in version.stdout
    assert version.stderr == "", "no TensorFlow start-up log without -v"
    demo_help = _run([str(venv / "bin" / "tfflannel"), "demo", "--help"], cwd=root)
    assert "configs/demo.yaml" in demo_help.stdout
    script = ("import tfflannel\n"
              "from tfflannel.cli.common import load_cli_config\n"
              "config = load_cli_config('configs/demo.yaml', ['inference.k=3'], 'configs/demo.yaml')\n"
              "print(tfflannel.__file__)\n"
              "print(config.demo.backbones, config.data.folds, config.inference.k)\n")
    loaded = _run([str(venv / "bin" / "python"), "-c", script], cwd=root)
    module_file, values = loaded.stdout.splitlines()
    assert Path(module_file).is_relative_to(venv) and not Path(module_file).is_relative_to(REPO)
    assert values == "('mobilenet_v2', 'resnet50') 3 3"
