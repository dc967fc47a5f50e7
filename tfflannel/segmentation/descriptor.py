"""The segmenter descriptor contract: a `*.json` file beside a segmenter's weights, read and written only here.

`tools/train_segmenter.py` writes one (`lung_segmenter.json`) for the segmenter it trains; the shipped one is
`tfflannel/weights/lung_segmenter.json`. `segmentation.inference.load_segmenter` reads it to build the model
(`preset`, `input_size`, `classes`, `architecture`), load its `weights` (a file beside the descriptor) and turn
on flip TTA. `training` (the recipe, `RECIPE_KEYS` plus `pairs` and `seconds`) and `cross_validation` (its CV
figures) are records for people and tests. No Keras import.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from tfflannel.errors import InputError
from tfflannel.utils import write_text_atomic

DESCRIPTOR_FILE = "lung_segmenter.json"


@dataclass(frozen=True, kw_only=True)
class SegmenterDescriptor:
    """What a segmenter descriptor holds (fields in file order).

    Args:
        preset: str. FC-DenseNet preset (`models.fc_densenet`), e.g. `fcdn_small`.
        input_size: int. Side of the segmenter's square input. Defaults to `256`.
        classes: str. `lung` or `jsrt` (`models.fc_densenet.SEGMENTATION_CLASSES`). Defaults to `"lung"`.
        weights: str. The weights file, relative to the descriptor's folder.
        flip_tta: bool. Average each film's output with its mirror's. Defaults to `False`.
        description: str or None. Where the segmenter came from; `None`: the descriptor's path.
        architecture: dict. Overrides of the preset (`build_fc_densenet` keywords). Defaults to `{}`.
        training: dict or None. The recipe it was trained with (`RECIPE_KEYS`, `pairs`, `seconds`).
        cross_validation: dict or None. The recipe's patient-grouped CV figures.
    """

    preset: str
    input_size: int = 256
    classes: str = "lung"
    weights: str
    flip_tta: bool = False
    description: str | None = None
    architecture: dict = field(default_factory=dict)
    training: dict | None = None
    cross_validation: dict | None = None

    def weights_path(self, descriptor_path):
        """The weights file of the descriptor at `descriptor_path` (resolved beside it)."""
        return Path(descriptor_path).parent / self.weights

    def as_dict(self):
        """The descriptor as written: unset optional entries (empty `architecture`, `None` records) left out."""
        return {name: value for name, value in dataclasses.asdict(self).items()
                if not (value is None or (name == "architecture" and not value))}


_TYPES = {"preset": (str,), "input_size": (int,), "classes": (str,), "weights": (str,), "flip_tta": (bool,),
          "description": (str,), "architecture": (dict,), "training": (dict,), "cross_validation": (dict,)}


def read_segmenter_descriptor(path):
    """Read and check a segmenter descriptor.

    Args:
        path: str or Path. The `.json` descriptor.

    Returns:
        SegmenterDescriptor.

    Raises:
        FileNotFoundError: no such file.
        InputError: not JSON, not a mapping, `preset` or `weights` missing, an unknown key or a value of the wrong
            type (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no segmenter descriptor here")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"{path}: unreadable segmenter descriptor ({error})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: a segmenter descriptor is a JSON mapping. Received: {type(data).__name__}.")
    missing = sorted({"preset", "weights"} - set(data))
    unknown = sorted(set(data) - set(_TYPES))
    if missing or unknown:
        raise InputError(f"{path}: segmenter descriptor with missing key(s) {missing} / unknown key(s) {unknown}; "
                         f"expected `preset` and `weights`, optionally {sorted(set(_TYPES) - {'preset', 'weights'})}")
    for name, value in data.items():
        wanted = _TYPES[name]
        wrong_bool = isinstance(value, bool) and bool not in wanted
        if not (value is None and name not in ("preset", "weights")) and (
                not isinstance(value, wanted) or wrong_bool):
            raise InputError(f"{path}: segmenter descriptor `{name}` must be {wanted[0].__name__}. "
                             f"Received: {value!r}.")
    return SegmenterDescriptor(**{key: value for key, value in data.items() if value is not None})


def write_segmenter_descriptor(path, descriptor):
    """Write a segmenter descriptor atomically (indent 2, the layout of the shipped file).

    Args:
        path: str or Path. The `.json` file (its weights file lies beside it).
        descriptor: SegmenterDescriptor.
    """
    write_text_atomic(Path(path), json.dumps(descriptor.as_dict(), indent=2) + "\n")
