"""Torchvision/timm state dicts -> tfflannel backbones, by tensor name (plain NumPy; torch only for `.pth`).

A state dict is read by `state_dicts.read_state_dict` (safetensors with NumPy, or a torchvision
`.pth`/`.pt` through torch). Every tensor is mapped by name onto a Keras layer of the backbone (conv
OIHW -> HWIO, Linear transposed, VGG's first Linear rows reordered from torch's CHW flatten order to
Keras' HWC), and a file that does not fit is refused with the names of the missing and unexpected tensors.

`import_weights` writes the weights of the *reference network*
`keras.Model(x, create_backbone(NAME, x, include_top=True))` (the 1000-class torchvision model at
the backbone's native input size), so that `model.load_weights(FILE)` on it reproduces
torchvision's logits; `load_backbone_weights` puts the backbone part of such a file, or of a
`.pth`/safetensors file, into a base-learner classifier whose head starts new.

Which torch module each Keras layer is comes from `torch_layout.MODULE_NAMES`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from tfflannel.errors import InputError
from tfflannel.models.state_dicts import is_state_dict_file, read_state_dict
from tfflannel.models.torch_layout import FINAL_LINEARS, MODULE_NAMES, apply_timm_aliases, check_importable

log = logging.getLogger(__name__)

REFERENCE_ATTR = "tfflannel_reference_backbone"
BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


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
    check_importable(backbone)
    state = apply_timm_aliases(backbone, state)
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
    check_importable(backbone)
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
    check_importable(backbone)
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



