"""State dict files: torchvision/timm weights read as {name: np.ndarray}, and seeded ones written.

A state dict is read from a safetensors file (the `safetensors` package's NumPy API, no torch) or from a
torchvision `.pth`/`.pt` file (through torch, extra `tfflannel[torch]`), its keys normalised as torchvision's
loader does. The seeded generator `seeded_state_dict` fills a state dict from (name, shape) pairs with NumPy;
the parity fixtures (`tools/make_parity_fixtures.py`) and their test both use it.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np

from tfflannel.errors import InputError
from tfflannel.models.weights_files import SAFETENSORS_SUFFIX, TORCH_SUFFIXES, check_weights_file

_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def read_state_dict(path):
    """A torchvision/timm state dict as {name: np.ndarray}.

    Args:
        path: str or Path. A `.safetensors` file (read with NumPy, no torch) or a torchvision `.pth`/`.pt`
            file (a state dict, optionally under a `state_dict` or `model` key; needs torch).

    Returns:
        dict of str -> np.ndarray, keys normalised: a `module.` prefix removed and DenseNet's legacy names
        (`norm.1`, `conv.1`) renamed as torchvision does on load.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: an unknown suffix, a truncated or corrupt file (`check_weights_file`), or torch is not
            installed for a `.pth` file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix not in (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES):
        raise InputError(f"{path}: expected a torchvision .pth/.pt or a .safetensors state dict. "
                         f"Received suffix {suffix or '(none)'!r}.")
    check_weights_file(path)
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            state = load_file(str(path))
        except SafetensorError as error:
            raise InputError(f"{path}: corrupt safetensors file: {' '.join(str(error).split())}") from None
    else:
        state = _read_torch_file(path)
    return normalise_keys(state)


def _read_torch_file(path):
    try:
        import torch
    except ImportError:
        raise InputError(f"{path}: reading a .pth file needs PyTorch: pip install 'tfflannel[torch]' (or torch), "
                         f"or pass the same weights as a .safetensors file (for example timm's *.tv_in1k "
                         f"model.safetensors), which needs no torch.") from None
    import pickle

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, KeyError, ValueError) as error:
        raise InputError(f"{path}: truncated or corrupt PyTorch file ({type(error).__name__}: "
                         f"{' '.join(str(error).split())[:200]})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a state dict (a mapping of tensor names to tensors)")
    return {name: tensor.detach().cpu().numpy() for name, tensor in state.items() if hasattr(tensor, "detach")}


def normalise_keys(state):
    """Strip `module.`, rename DenseNet's legacy keys (`norm.1` -> `norm1`), as torchvision's loader does."""
    out = {}
    for name, value in state.items():
        name = name[len("module."):] if name.startswith("module.") else name
        match = _DENSENET_LEGACY.match(name)
        out[match.group(1) + match.group(2) if match else name] = np.asarray(value)
    return out


def is_state_dict_file(path):
    """Whether `path` names a torch (`.pth`/`.pt`) or safetensors state dict."""
    return Path(path).suffix.lower() in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)


def seeded_state_dict(names_shapes, seed=0):
    """A deterministic torchvision-style state dict from (name, shape) pairs, generated with NumPy.

    Each tensor has its own `np.random.default_rng([seed, crc32(name)])`, so the values do not depend on
    the order of the list. Conv/Linear weights ~ N(0, 1/fan_in); BN weight U(0.5, 1.5) (U(0.05, 0.25)
    for ResNet's last BN of a residual branch, `*.bn3`, so that 50 residual blocks keep the logits
    O(1), as torchvision's `zero_init_residual` damps them), bias and running_mean N(0, 0.1),
    running_var U(0.5, 1.5) (positive); other biases N(0, 0.1); `num_batches_tracked` 0.

    Args:
        names_shapes: iterable of (str, tuple of int). Tensor names and shapes, in torch layout.
        seed: int. Defaults to `0`.

    Returns:
        dict of str -> np.ndarray (float32; int64 for num_batches_tracked).
    """
    names_shapes = [(str(name), tuple(int(d) for d in shape)) for name, shape in names_shapes]
    bn_modules = {name.rsplit(".", 1)[0] for name, _ in names_shapes if name.endswith(".running_var")}
    state = {}
    for name, shape in names_shapes:
        module, _, param = name.rpartition(".")
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if param == "num_batches_tracked":
            state[name] = np.zeros(shape, np.int64)
            continue
        if module in bn_modules and param == "weight" and module.endswith("bn3"):
            value = rng.uniform(0.05, 0.25, shape)              # ResNet's last BN of a residual branch (damped)
        elif module in bn_modules and param in ("weight", "running_var"):
            value = rng.uniform(0.5, 1.5, shape)
        elif param == "weight":
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        state[name] = value.astype(np.float32)
    return state


def write_safetensors(state, path):
    """Write a NumPy state dict as a safetensors file (what timm publishes; read back by `read_state_dict`)."""
    from safetensors.numpy import save_file

    save_file({name: np.ascontiguousarray(value) for name, value in state.items()}, str(path))
