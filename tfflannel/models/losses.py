"""Losses in plain Keras 3 (keras.ops only)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tfflannel")
class PixelWeightedCrossentropy(keras.losses.Loss):
    """Class-weighted pixel cross-entropy with PyTorch's weighted-mean reduction.

    Equals `torch.nn.CrossEntropyLoss(weight=w)` on log-probabilities: the sum of
    `-w[y] * log p[y]` over all pixels of the batch divided by the sum of `w[y]`,
    so the loss scale does not depend on how much background an image has.

    Args:
        class_weights: sequence of float. One weight per class (the original
            segmenter used 0.5 for background, 1 for the others).
        name: str. Loss name. Defaults to `"pixel_weighted_crossentropy"`.
        **kwargs: other `keras.losses.Loss` arguments; `reduction` is ignored
            (the weighted mean is computed in `call`).
    """

    def __init__(self, class_weights, name="pixel_weighted_crossentropy", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum", **kwargs)
        self.class_weights = [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        """Return the weighted mean pixel negative log-likelihood of a batch.

        Args:
            y_true: tensor of integer class indices, shape `(B, H, W)` or `(B, H, W, 1)`.
            y_pred: tensor of shape `(B, H, W, C)`, probabilities (clipped to `[1e-7, 1]` before the log).

        Returns:
            scalar tensor: `sum(w[y] * -log p[y]) / max(sum(w[y]), 1e-7)` over every pixel of the batch.
        """
        num_classes = len(self.class_weights)
        labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        one_hot = ops.one_hot(labels, num_classes, dtype=y_pred.dtype)
        weights = ops.sum(one_hot * ops.convert_to_tensor(self.class_weights, dtype=y_pred.dtype), axis=-1)
        log_probs = ops.log(ops.clip(y_pred, 1e-7, 1.0))
        nll = -ops.sum(one_hot * log_probs, axis=-1)
        return ops.sum(weights * nll) / ops.maximum(ops.sum(weights), 1e-7)

    def get_config(self):
        """Return `name` and `class_weights` for Keras serialisation."""
        return {"name": self.name, "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="tfflannel")
class DiceWeightedCrossentropy(keras.losses.Loss):
    """Soft Dice of the lung (union of the lung classes) plus `PixelWeightedCrossentropy`.

    The Dice term is Keras' own `keras.losses.Dice` over the whole batch's lung probability map, so
    it weighs each pixel of the lung boundary as the Jaccard/Dice metrics do; the cross-entropy
    keeps the per-pixel gradients that make training stable from the start.

    Args:
        class_weights: sequence of float. The cross-entropy's class weights.
        lung_classes: sequence of int. Channels whose sum is the lung probability.
        dice_weight: float. Weight of the Dice term. Defaults to `1.0`.
        name: str. Defaults to `"dice_weighted_crossentropy"`.
        **kwargs: other `keras.losses.Loss` arguments; `reduction` is ignored.
    """

    def __init__(self, class_weights, lung_classes, dice_weight=1.0, name="dice_weighted_crossentropy", **kwargs):
        kwargs.pop("reduction", None)
        super().__init__(name=name, reduction="sum", **kwargs)
        self.class_weights = [float(w) for w in class_weights]
        self.lung_classes = [int(c) for c in lung_classes]
        self.dice_weight = float(dice_weight)
        self._crossentropy = PixelWeightedCrossentropy(self.class_weights)
        self._dice = keras.losses.Dice(reduction="sum_over_batch_size", axis=None)

    def call(self, y_true, y_pred):
        """Return `dice_weight * (1 - Dice(lung, P(lung))) + weighted CE` of a batch.

        Args:
            y_true: tensor of integer class indices, shape `(B, H, W)` or `(B, H, W, 1)`.
            y_pred: tensor of shape `(B, H, W, C)`, probabilities.

        Returns:
            scalar tensor.
        """
        labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
        lung_true = ops.zeros_like(y_pred[..., 0])
        lung_pred = ops.zeros_like(y_pred[..., 0])
        for index in self.lung_classes:
            lung_true = lung_true + ops.cast(ops.equal(labels, index), y_pred.dtype)
            lung_pred = lung_pred + y_pred[..., index]
        dice = self._dice(lung_true, lung_pred)
        return self.dice_weight * dice + self._crossentropy.call(labels, y_pred)

    def get_config(self):
        """Return `name`, `class_weights`, `lung_classes` and `dice_weight` for Keras serialisation."""
        return {"name": self.name, "class_weights": self.class_weights, "lung_classes": self.lung_classes,
                "dice_weight": self.dice_weight}


def segmentation_loss(name, class_weights, lung_classes):
    """The segmenter's loss by its config name (`segmentation.loss`).

    Args:
        name: str. `weighted_ce` or `dice_weighted_ce`.
        class_weights: sequence of float. One per class.
        lung_classes: sequence of int. Lung channels (for the Dice term).

    Returns:
        keras.losses.Loss.

    Raises:
        ValueError: unknown `name`.
    """
    if name == "weighted_ce":
        return PixelWeightedCrossentropy(class_weights)
    if name == "dice_weighted_ce":
        return DiceWeightedCrossentropy(class_weights, lung_classes)
    raise ValueError(f"segmentation.loss must be 'weighted_ce' or 'dice_weighted_ce'. Received: {name!r}.")
