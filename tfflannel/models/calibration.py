"""Temperature scaling of class probabilities (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017).

One definition, plain Keras 3 ops: `scale_by_temperature` is what `evaluate` applies to an ensemble's
recorded probabilities, what `train-ensemble` minimises the validation NLL of, and (through the
`TemperatureScaling` layer) what the exported SavedModel and `predict --runs` compute after the ensemble.
"""

from __future__ import annotations

import keras
from keras import layers, ops

# Probabilities are clipped here before the log: a rounded 0.000000 in a predictions CSV stays finite.
PROBABILITY_FLOOR = 1e-12


def scale_by_temperature(probabilities, temperature):
    """`softmax(log p / T)` along the last axis: probabilities made softer (T > 1) or sharper (T < 1).

    The argmax of each row is unchanged, so F1 and accuracy are too; only the confidence changes.

    Args:
        probabilities: tensor or array of shape `(..., C)`, float. Rows of class probabilities.
        temperature: float or scalar tensor. T > 0; `1.0` returns the input (up to the floor and renormalisation).

    Returns:
        tensor of shape `(..., C)`, float32: the temperature-scaled probabilities (rows sum to 1).
    """
    probabilities = ops.cast(probabilities, "float32")
    logits = ops.log(ops.maximum(probabilities, PROBABILITY_FLOOR))
    return ops.softmax(logits / ops.cast(temperature, "float32"), axis=-1)


@keras.saving.register_keras_serializable(package="tfflannel")
class TemperatureScaling(layers.Layer):
    """(B, C) probabilities -> (B, C) `softmax(log p / T)` with a fixed temperature T (no trainable weights).

    Args:
        temperature: float. T > 0.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Raises:
        ValueError: T is not a positive finite number.
    """

    def __init__(self, temperature, **kwargs):
        super().__init__(**kwargs)
        temperature = float(temperature)
        if not 0.0 < temperature < float("inf"):
            raise ValueError(f"temperature must be a positive finite number. Received: temperature={temperature}.")
        self.temperature = temperature

    def call(self, inputs):
        """Return `scale_by_temperature(inputs, self.temperature)`."""
        return scale_by_temperature(inputs, self.temperature)

    def compute_output_shape(self, input_shape):
        """The input shape: one probability per class."""
        return input_shape

    def get_config(self):
        """Return the layer config, with `temperature`, for Keras serialisation."""
        return {**super().get_config(), "temperature": self.temperature}
