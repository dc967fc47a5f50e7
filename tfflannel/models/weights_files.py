"""Weights files checked before use: a corrupt, truncated or mislabelled file is bad input, not a crash.

`check_weights_file` reads only what tells a file's kind apart (a safetensors header, a zip archive's
directory, a pickle's first bytes, an HDF5 superblock), so a command checks `--weights FILE` before it
writes anything; the readers (`state_dicts.read_state_dict`, Keras' `load_weights`) then read the
whole file. Every refusal is one line naming the file and what is wrong with it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from tfflannel.errors import InputError

TORCH_SUFFIXES = (".pth", ".pt")
SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_PROTOCOL_BYTES = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
"""How a pickle starts (protocol 2-5): torch's legacy (pre-1.6, non-zip) `.pth` files are pickles."""


def check_weights_file(path):
    """Refuse a weights file that cannot be what its suffix says, reading only its header.

    Args:
        path: str or Path. A `.safetensors`, a torch `.pth`/`.pt`, or an HDF5 weights file (`.weights.h5`,
            Keras' ImageNet `.h5`; any other suffix is read as HDF5, as Keras does).

    Returns:
        Path. `path`.

    Raises:
        FileNotFoundError: `path` is not a file.
        InputError: the file is empty, truncated or of another kind; the message names it and says which.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty weights file (0 bytes)")
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        _check_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        _check_torch_file(path)
    else:
        _check_hdf5(path)
    return path


def _check_safetensors(path):
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except SafetensorError as error:
        raise InputError(f"{path}: not a readable safetensors file (truncated, or not safetensors): "
                         f"{_one_line(error)}") from None


def _check_torch_file(path):
    with open(path, "rb") as handle:
        start = handle.read(4)
    if start.startswith(PICKLE_PROTOCOL_BYTES):
        return                                               # torch's legacy format; torch.load checks the rest
    if not start.startswith(b"PK\x03\x04"):
        raise InputError(f"{path}: not a PyTorch file (neither a zip archive nor a legacy pickle; starts with "
                         f"{start!r})")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as error:
        raise InputError(f"{path}: truncated or corrupt PyTorch file (its zip directory cannot be read: "
                         f"{_one_line(error)})") from None
    if not any(name.endswith("data.pkl") for name in names):
        raise InputError(f"{path}: a zip archive without data.pkl, not a PyTorch file saved by torch.save")


def _check_hdf5(path):
    import h5py

    try:
        with h5py.File(path, "r"):
            pass
    except OSError as error:
        raise InputError(f"{path}: not a readable HDF5 weights file (truncated, or not HDF5): "
                         f"{_one_line(error)}") from None


def _one_line(error):
    return " ".join(str(error).split())
