"""Corrupt weights files are bad input: one line naming the file and the fault, exit code 2, nothing written."""

import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from tfflannel.errors import InputError
from tfflannel.models.weights_files import check_weights_file

pytest.importorskip("safetensors", reason="safetensors is a runtime dependency (pip install safetensors)")


def _safetensors_bytes(tmp_path):
    from safetensors.numpy import save_file

    save_file({"features.conv0.weight": np.ones((8, 3, 3, 3), np.float32)}, str(tmp_path / "good.safetensors"))
    return (tmp_path / "good.safetensors").read_bytes()


def _torch_zip_bytes(tmp_path):
    """A zip laid out as torch.save writes it (archive/data.pkl + tensor data), made without torch."""
    with zipfile.ZipFile(tmp_path / "good.pth", "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", bytes(4096))
    return (tmp_path / "good.pth").read_bytes()


def _hdf5_bytes(tmp_path):
    import h5py

    with h5py.File(tmp_path / "good.weights.h5", "w") as handle:
        handle["layers/dense/vars/0"] = np.ones((64, 64), np.float32)
    return (tmp_path / "good.weights.h5").read_bytes()


CORRUPT = {
    "truncated_pth": (".pth", lambda t: _torch_zip_bytes(t)[:2000], "truncated or corrupt PyTorch file"),
    "text_pth": (".pth", lambda t: b"<html>404 Not Found</html>\n", "not a PyTorch file"),
    "text_safetensors": (".safetensors", lambda t: b"version https://git-lfs.github.com/spec/v1\n",
                         "not a readable safetensors file"),
    "truncated_safetensors": (".safetensors", lambda t: _safetensors_bytes(t)[:-100],
                              "not a readable safetensors file"),
    "truncated_weights_h5": (".weights.h5", lambda t: _hdf5_bytes(t)[:5000], "not a readable HDF5 weights file"),
    "text_weights_h5": (".weights.h5", lambda t: b"not hdf5\n", "not a readable HDF5 weights file"),
    "empty_pth": (".pth", lambda t: b"", "empty weights file"),
}


def corrupt_file(tmp_path, case):
    suffix, make, _ = CORRUPT[case]
    path = tmp_path / f"densenet161{suffix}"
    path.write_bytes(make(tmp_path))
    return path


def test_the_intact_files_pass_the_check(tmp_path):
    for name, content in (("good.safetensors", _safetensors_bytes), ("good.pth", _torch_zip_bytes),
                          ("good.weights.h5", _hdf5_bytes)):
        content(tmp_path)
        assert check_weights_file(tmp_path / name) == tmp_path / name


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_check_names_the_file_and_the_fault(tmp_path, case):
    path = corrupt_file(tmp_path, case)
    with pytest.raises(InputError) as info:
        check_weights_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and CORRUPT[case][2] in message and "\n" not in message


@pytest.mark.parametrize("case", ["truncated_pth", "text_pth", "text_safetensors", "truncated_safetensors"])
def test_import_weights_exits_2_with_one_line_and_writes_nothing(tmp_path, case):
    from tfflannel.cli import main

    path = corrupt_file(tmp_path, case)
    out = tmp_path / "out" / "densenet161.weights.h5"
    result = CliRunner().invoke(main, ["import-weights", "--backbone", "densenet161", "--from", str(path),
                                       "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and CORRUPT[case][2] in lines[0], result.output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def sample_manifest_dir(tmp_path_factory, sample_cls_dir):
    from tfflannel.data.manifest import prepare_manifest

    workdir = tmp_path_factory.mktemp("work")
    prepare_manifest(workdir, folders=[sample_cls_dir], folds=3, test_size=0.25, progress=False)
    return workdir


@pytest.mark.parametrize("command", ["train-patch", "train-global"])
@pytest.mark.parametrize("case", ["truncated_pth", "text_safetensors", "truncated_weights_h5"])
def test_weights_option_exits_2_before_the_run_directory_exists(tmp_path, sample_manifest_dir, command, case):
    from tfflannel.cli import main

    path = corrupt_file(tmp_path, case)
    backbone = "mobilenet_v2" if case == "truncated_weights_h5" else "densenet161"
    args = [command, "--backbone", backbone, "--fold", "1", "--data", str(sample_manifest_dir),
            "--out", str(tmp_path / "run"), "--weights", str(path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and CORRUPT[case][2] in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_reproduce_checks_every_weights_file_before_any_job(tmp_path):
    from tfflannel.reproduce import resolve_weights

    weights_dir = tmp_path / "w"
    weights_dir.mkdir()
    (weights_dir / "densenet161.safetensors").write_bytes(b"not safetensors at all\n")
    with pytest.raises(InputError, match=r"densenet161.safetensors: not a readable safetensors file"):
        resolve_weights(["densenet161"], weights_dir=weights_dir)
    with pytest.raises(InputError, match=r"densenet161.safetensors: not a readable safetensors file"):
        resolve_weights(["densenet161"], weights=str(weights_dir / "densenet161.safetensors"))
