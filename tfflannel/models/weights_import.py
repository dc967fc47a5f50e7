"""Torchvision/timm state dicts -> tfflannel backbones, by tensor name (plain NumPy; torch only for `.pth`).

A state dict is read from a safetensors file (the `safetensors` package's NumPy API, no torch) or
from a torchvision `.pth`/`.pt` file (through torch, extra `tfflannel[torch]`). Every tensor is
mapped by name onto a Keras layer of the backbone (conv OIHW -> HWIO, Linear transposed, VGG's
first Linear rows reordered from torch's CHW flatten order to Keras' HWC), and a file that does
not fit is refused with the names of the missing and unexpected tensors.

`import_weights` writes the weights of the *reference network*
`keras.Model(x, create_backbone(NAME, x, include_top=True))` (the 1000-class torchvision model at
the backbone's native input size), so that `model.load_weights(FILE)` on it reproduces
torchvision's logits; `load_backbone_weights` puts the backbone part of such a file, or of a
`.pth`/safetensors file, into a base-learner classifier whose head starts new.

The seeded generator `seeded_state_dict` fills a state dict from (name, shape) pairs with NumPy;
the parity fixtures (`tools/make_parity_fixtures.py`) and their test both use it.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from pathlib import Path

import numpy as np

from tfflannel.errors import InputError
from tfflannel.models.weights_files import SAFETENSORS_SUFFIX, TORCH_SUFFIXES, check_weights_file

log = logging.getLogger(__name__)

REFERENCE_ATTR = "tfflannel_reference_backbone"
BN_PARAMS = ("weight", "bias", "running_mean", "running_var")

# The Linear layers a classifier replaces (its head starts new) and timm's names for torchvision's.
FINAL_LINEARS = {"densenet161": ("classifier",), "resnext101_32x8d": ("fc",), "resnet152_tv": ("fc",),
                 "vgg19_bn": ("classifier.6",), "inception_v3_tv": ("fc", "AuxLogits.fc")}
TIMM_ALIASES = {"vgg19_bn": {"pre_logits.fc1": "classifier.0", "pre_logits.fc2": "classifier.3",
                             "head.fc": "classifier.6"}}
_DENSENET_LEGACY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


# --- Keras layer name -> torch module path, per family --------------------------------------------------------------

def _densenet_module(name):
    rules = ((r"densenet161_stem_conv", "features.conv0"), (r"densenet161_stem_bn", "features.norm0"),
             (r"densenet161_block(\d+)_layer(\d+)_bn([12])", r"features.denseblock\1.denselayer\2.norm\3"),
             (r"densenet161_block(\d+)_layer(\d+)_conv([12])", r"features.denseblock\1.denselayer\2.conv\3"),
             (r"densenet161_transition(\d+)_bn", r"features.transition\1.norm"),
             (r"densenet161_transition(\d+)_conv", r"features.transition\1.conv"),
             (r"densenet161_final_bn", "features.norm5"), (r"densenet161_classifier", "classifier"))
    return _first_match(name, rules)


def _resnet_module(prefix):
    def module(name):
        match = re.fullmatch(rf"{prefix}_stage(\d)_block(\d+)_(conv\d|bn\d|down_conv|down_bn)", name)
        if match:
            stage, block, part = match.groups()
            part = {"down_conv": "downsample.0", "down_bn": "downsample.1"}.get(part, part)
            return f"layer{stage}.{int(block) - 1}.{part}"
        return {f"{prefix}_stem_conv": "conv1", f"{prefix}_stem_bn": "bn1", f"{prefix}_fc": "fc"}.get(name)

    return module


def _vgg_module(name):
    from tfflannel.models.backbones.vgg import VGG19_CFG

    table, index, block, conv = {}, 0, 1, 0
    for item in VGG19_CFG:
        if item == "M":
            index, block, conv = index + 1, block + 1, 0
            continue
        conv += 1
        table[f"vgg19_bn_block{block}_conv{conv}"] = f"features.{index}"
        table[f"vgg19_bn_block{block}_conv{conv}_bn"] = f"features.{index + 1}"
        index += 3
    table.update({"vgg19_bn_fc1": "classifier.0", "vgg19_bn_fc2": "classifier.3",
                  "vgg19_bn_predictions": "classifier.6"})
    return table.get(name)


def _inception_module(name):
    rules = ((r"inception_v3_tv_(Conv2d_\w+)_(conv|bn)", r"\1.\2"),
             (r"inception_v3_tv_(Mixed_\d[a-e])_(branch\w+)_(conv|bn)", r"\1.\2.\3"),
             (r"inception_v3_tv_AuxLogits_(conv\d)_(conv|bn)", r"AuxLogits.\1.\2"),
             (r"inception_v3_tv_AuxLogits_fc", "AuxLogits.fc"), (r"inception_v3_tv_fc", "fc"))
    return _first_match(name, rules)


def _first_match(name, rules):
    for pattern, replacement in rules:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


MODULE_NAMES = {"densenet161": _densenet_module, "resnext101_32x8d": _resnet_module("resnext101_32x8d"),
                "resnet152_tv": _resnet_module("resnet152_tv"), "vgg19_bn": _vgg_module,
                "inception_v3_tv": _inception_module}


def importable_backbones():
    """Backbones whose torchvision state dicts `import-weights` maps (the torchvision-layout ones), sorted."""
    return sorted(MODULE_NAMES)


def _check_backbone(backbone):
    if backbone not in MODULE_NAMES:
        raise InputError(f"import-weights maps torchvision state dicts onto the torchvision-layout backbones "
                         f"{importable_backbones()}. Received: backbone={backbone!r}. Keras-applications "
                         f"backbones take Keras' own ImageNet files (--weights imagenet or a Keras .h5).")


# --- reading ---------------------------------------------------------------------------------------------------------

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


# --- mapping ---------------------------------------------------------------------------------------------------------

def _weighted_layers(model):
    return [layer for layer in model.layers if layer.weights]


def _tensor_names(layer, module):
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return [f"{module}.{param}" for param in BN_PARAMS]
    return [f"{module}.weight"] + ([f"{module}.bias"] if len(layer.weights) > 1 else [])


def _convert(layer, tensors, module, state, model):
    """The layer's `set_weights` list from its torch tensors (by layer type), shapes checked by Keras."""
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return [state[f"{module}.{param}"] for param in BN_PARAMS]
    weight = state[f"{module}.weight"]
    if isinstance(layer, keras.layers.Dense):
        weight = weight.reshape(weight.shape[0], -1).T          # timm's conv-shaped fc1/fc2 flatten to Linear's
        spatial = _flattened_from(layer, model)
        if spatial is not None:                                  # rows: torch CHW flatten order -> Keras HWC
            h, w, c = spatial
            weight = weight.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(h * w * c, -1)
    else:
        weight = weight.transpose(2, 3, 1, 0)                   # OIHW -> HWIO (grouped: HW, I/g, O)
    return [weight] + ([state[f"{module}.bias"]] if len(tensors) > 1 else [])


def _flattened_from(layer, model):
    """(h, w, c) when a Dense layer of `model` reads a Flatten of a spatial map (VGG's fc1), else None."""
    import keras

    for source in model.layers:
        if isinstance(source, keras.layers.Flatten) and source.output is layer.input:
            shape = source.input.shape
            if len(shape) == 4:
                return tuple(int(d) for d in shape[1:])
    return None


def assign_state_dict(model, backbone, state, skip=()):
    """Put a normalised state dict into every mapped layer of `model`.

    Args:
        model: keras.Model. The reference network, or a classifier built on backbone `backbone`.
        backbone: str. One of `importable_backbones()`.
        state: dict of str -> np.ndarray. Normalised torch names (`read_state_dict`).
        skip: iterable of str. Torch module paths (or prefixes ending in `.`) the model is allowed not
            to have (a replaced head, an auxiliary head that was not built). Defaults to `()`.

    Returns:
        list of str. Notes on what was skipped (for the log).

    Raises:
        ValueError: tensors the model needs are missing, tensors are left over that the model cannot take,
            or a shape does not fit; the message names them.
    """
    _check_backbone(backbone)
    state = _apply_aliases(backbone, state)
    module_of = MODULE_NAMES[backbone]
    plan, expected = [], set()
    for layer in _weighted_layers(model):
        module = module_of(layer.name)
        if module is None:
            continue                                             # a new head (head_logits) or the input scaling
        tensors = _tensor_names(layer, module)
        expected.update(tensors)
        plan.append((layer, module, tensors))
    present = {name for name in state if not name.endswith("num_batches_tracked")}
    missing = sorted(expected - present)
    leftover = sorted(present - expected)
    prefixes = tuple(s if s.endswith(".") else f"{s}." for s in skip)
    skipped = [name for name in leftover if name.startswith(prefixes)]
    unexpected = sorted(set(leftover) - set(skipped))
    if missing or unexpected:
        raise InputError(f"the state dict does not fit {backbone!r}: {len(missing)} missing tensors "
                         f"{_short(missing)}, {len(unexpected)} unexpected tensors {_short(unexpected)}")
    for layer, module, tensors in plan:
        values = [np.asarray(v, dtype=np.float32) for v in _convert(layer, tensors, module, state, model)]
        shapes = [tuple(v.shape) for v in layer.get_weights()]
        if shapes != [v.shape for v in values]:
            raise InputError(f"{module}: shapes {[v.shape for v in values]} (converted) do not fit Keras layer "
                             f"{layer.name!r} {shapes}")
        layer.set_weights(values)
    notes = []
    if skipped:
        modules = sorted({name.rsplit(".", 1)[0] for name in skipped})
        notes.append(f"skipped {len(skipped)} tensors of {_short(modules)} (not part of this model)")
    return notes


def _apply_aliases(backbone, state):
    aliases = TIMM_ALIASES.get(backbone, {})
    out = {}
    for name, value in state.items():
        module, _, param = name.rpartition(".")
        out[f"{aliases.get(module, module)}.{param}"] = value
    return out


def _short(names, limit=8):
    names = list(names)
    return "[" + ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "") + "]"


# --- reference network and files -------------------------------------------------------------------------------------

def build_reference_network(backbone, input_size=None, **kwargs):
    """`keras.Model(x, create_backbone(backbone, x, include_top=True))`, the 1000-class torchvision model.

    Args:
        backbone: str. A registered backbone.
        input_size: int. Input side; defaults to the backbone's native size (224, or 299 for Inception).
        **kwargs: passed to the builder (e.g. `impl` for ResNeXt).

    Returns:
        keras.Model: (B, S, S, 3) pre-processed RGB -> (B, 1000) logits.
    """
    import keras

    from tfflannel.models.backbones import backbone_config, create_backbone

    size = input_size or backbone_config(backbone).input_size
    inputs = keras.Input((size, size, 3), name="image")
    return keras.Model(inputs, create_backbone(backbone, inputs, include_top=True, **kwargs),
                       name=f"{backbone}_reference")


def import_weights(backbone, source, out):
    """Convert a torchvision/timm state dict into a `.weights.h5` of the backbone's reference network.

    Args:
        backbone: str. One of `importable_backbones()`.
        source: str or Path. `.pth`/`.pt` (needs torch) or `.safetensors`.
        out: str or Path. Output file; must end in `.weights.h5`. Written atomically.

    Returns:
        list of str. Notes (tensors skipped, such as InceptionV3's auxiliary head).

    Raises:
        FileNotFoundError, ValueError: see `read_state_dict` and `assign_state_dict`.
    """
    _check_backbone(backbone)
    out = Path(out)
    if not out.name.endswith(".weights.h5"):
        raise InputError(f"{out}: the output must end in .weights.h5 (Keras' weights format)")
    state = read_state_dict(source)
    model = build_reference_network(backbone)
    skip = ("AuxLogits.",) if backbone == "inception_v3_tv" else ()
    notes = assign_state_dict(model, backbone, state, skip=skip)
    if any("AuxLogits" in note for note in notes):
        notes.append("the reference network has no auxiliary head; pass the .pth/.safetensors file itself to "
                     "--weights to keep AuxLogits.conv0/conv1 for training with the auxiliary loss")
    _save_reference(model, backbone, out)
    return notes


def _save_reference(model, backbone, out):
    import h5py

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name[:-len('.weights.h5')]}.partial.weights.h5"
    try:
        model.save_weights(str(tmp))
        with h5py.File(tmp, "a") as handle:
            handle.attrs[REFERENCE_ATTR] = backbone
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def reference_backbone_of(path):
    """The backbone name an `import-weights` file was written for, or None for any other weights file."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            value = handle.attrs.get(REFERENCE_ATTR)
    except OSError:
        return None
    return value.decode() if isinstance(value, bytes) else value


def is_state_dict_file(path):
    """Whether `path` names a torch (`.pth`/`.pt`) or safetensors state dict."""
    return Path(path).suffix.lower() in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)


def load_backbone_weights(model, backbone, path):
    """Pretrained backbone weights into a base-learner classifier; its new head keeps its initial values.

    Args:
        model: keras.Model. A classifier from `build_classifier(backbone, ...)`.
        backbone: str. Its backbone, one of `importable_backbones()`.
        path: str or Path. An `import-weights` `.weights.h5`, or a `.pth`/`.pt`/`.safetensors` state dict.

    Returns:
        list of str. Notes on skipped tensors (the replaced Linear, an unbuilt auxiliary head).

    Raises:
        FileNotFoundError, ValueError: the file is missing, of another backbone, or does not fit.
    """
    _check_backbone(backbone)
    path = Path(path)
    skip = (*FINAL_LINEARS[backbone], "AuxLogits.", "classifier.0", "classifier.3")
    if is_state_dict_file(path):
        return assign_state_dict(model, backbone, read_state_dict(path), skip=skip)
    written_for = reference_backbone_of(path)
    if written_for != backbone:
        raise InputError(f"{path}: not an import-weights file of {backbone!r} (written for {written_for!r})")
    reference = build_reference_network(backbone)
    reference.load_weights(str(path))
    return copy_matching_layers(reference, model, FINAL_LINEARS[backbone], backbone)


def copy_matching_layers(source, target, replaced, backbone):
    """Copy weights layer by layer (same Keras name) from `source` into `target`; every backbone layer must match."""
    module_of = MODULE_NAMES[backbone]
    by_name = {layer.name: layer for layer in _weighted_layers(source)}
    copied, notes, unset = 0, [], []
    for layer in _weighted_layers(target):
        module = module_of(layer.name)
        if module is None:
            continue
        if layer.name not in by_name and module.startswith("AuxLogits."):
            unset.append(module)                                 # the reference network has no auxiliary head
            continue
        if layer.name not in by_name:
            raise InputError(f"Keras layer {layer.name!r} ({module}) has no weights in the reference file")
        layer.set_weights(by_name[layer.name].get_weights())
        copied += 1
    left = sorted(set(by_name) - {layer.name for layer in _weighted_layers(target)})
    if left:
        notes.append(f"kept {copied} layers; not used: {_short(left)} (replaced by the new head: {list(replaced)})")
    if unset:
        notes.append(f"{_short(unset)} start from their initial values (an import-weights file has no auxiliary "
                     f"head; pass the .pth/.safetensors file to --weights to load them)")
    return notes


# --- seeded weights (parity fixtures and their test) -----------------------------------------------------------------

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
