"""Load a tfflannel `model.keras` in your own code: import this module first, or call `load_model`.

A saved tfflannel model holds custom Keras objects, registered when their modules are imported:
`GrayToImageNet` (every base learner's input scaling, `models/classifier.py`), `GroupedConv2D`
(ResNeXt, `models/backbones/resnext.py`), `OuterProduct` and `WeightedLearnerSum` (the ensembles,
`models/ensemble.py`), `TemperatureScaling` (`models/calibration.py`) and the segmentation losses
(`models/losses.py`). Without them `keras.saving.load_model` fails with "Could not locate class".

Example:
    >>> import numpy as np
    >>> from tfflannel.models.saving import load_model
    >>> model = load_model("runs/demo/f1/patch_mobilenet_v2/model.keras")
    >>> probabilities = model.predict(np.zeros((1, 96, 96, 1), "float32"))   # (B, S, S, 1) grey in [0, 255]
"""

from __future__ import annotations

import keras

import tfflannel.models.backbones.resnext  # noqa: F401  (GroupedConv2D)
import tfflannel.models.calibration  # noqa: F401  (TemperatureScaling)
import tfflannel.models.classifier  # noqa: F401  (GrayToImageNet)
import tfflannel.models.ensemble  # noqa: F401  (OuterProduct, WeightedLearnerSum)
import tfflannel.models.losses  # noqa: F401  (PixelWeightedCrossentropy, DiceWeightedCrossentropy)


def load_model(path, compile=False):
    """`keras.saving.load_model` with every tfflannel custom object registered.

    Args:
        path: str or Path. A run's `model.keras` (base learner, ensemble or segmenter).
        compile: bool. Restore the training configuration too. Defaults to `False` (inference only).

    Returns:
        keras.Model.
    """
    return keras.saving.load_model(path, compile=compile)
