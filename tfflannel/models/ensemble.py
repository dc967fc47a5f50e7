"""FLANNEL ensembles over base-learner scores (Qi et al., "FLANNEL", JAMIA 2021), plain Keras 3.

GENet, the neural weight module: f = the L learners' C scores concatenated
(R^{L*C}); the outer product f f^T, flattened (R^{(L*C)^2}), gives learner
weights w = tanh(Dense(L)); the output is softmax(sum_i w_i p_i). With the five
FLANNEL learners and four classes: 400 -> 5, 2,005 trainable parameters.
Variants for ablation: `flannel` (softmax instead of tanh on the weights) and
`mlp` (Dense(C) on f).
"""

from __future__ import annotations

import keras
from keras import layers, ops

ENSEMBLE_KINDS = ("genet", "flannel", "mlp")


@keras.saving.register_keras_serializable(package="tfflannel")
class OuterProduct(layers.Layer):
    """(B, D) -> (B, D * D): the flattened outer product f f^T of each row."""

    def call(self, inputs):
        outer = ops.einsum("bi,bj->bij", inputs, inputs)
        return ops.reshape(outer, (-1, inputs.shape[-1] * inputs.shape[-1]))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1] ** 2)


@keras.saving.register_keras_serializable(package="tfflannel")
class WeightedLearnerSum(layers.Layer):
    """sum_i w_i p_i for weights (B, L) and learner scores (B, L * C) -> (B, C)."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def call(self, inputs):
        weights, scores = inputs
        per_learner = ops.reshape(scores, (-1, weights.shape[-1], self.num_classes))
        return ops.sum(per_learner * ops.expand_dims(weights, -1), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def build_ensemble(kind="genet", num_learners=5, num_classes=4):
    """Build an ensemble model over `num_learners` x `num_classes` scores.

    Args:
        kind: str. `genet` (FLANNEL's neural weight module, tanh weights), `flannel` (softmax weights) or `mlp`.
            Defaults to `"genet"`.
        num_learners: int. Base learners (any number; five in FLANNEL). Defaults to `5`.
        num_classes: int. Defaults to `4`.

    Returns:
        keras.Model: (B, L*C) scores -> (B, C) probabilities; GENet/FLANNEL also expose the
        `learner_weights` layer output (B, L).
    """
    if kind not in ENSEMBLE_KINDS:
        raise ValueError(f"kind must be one of {ENSEMBLE_KINDS}. Received: kind={kind!r}.")
    inputs = keras.Input((num_learners * num_classes,), name="scores")
    if kind == "mlp":
        logits = layers.Dense(num_classes, name="mlp_logits")(inputs)
    else:
        outer = OuterProduct(name="outer_product")(inputs)
        raw = layers.Dense(num_learners, name="weight_dense")(outer)
        weights = layers.Activation("tanh" if kind == "genet" else "softmax", name="learner_weights")(raw)
        logits = WeightedLearnerSum(num_classes, name="weighted_sum")([weights, inputs])
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(inputs, outputs, name=f"{kind}_ensemble")


def inverse_frequency_alpha(labels, num_classes):
    """Focal-loss alpha: inverse class frequency of the training labels, normalised to sum to 1.

    The original used 1000 / n_c unnormalised with a sum over the batch; that is
    this alpha times the constant 1000 * sum_k(1 / n_k) * batch size, a loss
    scale that Adam largely cancels but that made the original's loss depend on
    batch and data size.
    """
    import numpy as np

    counts = np.bincount(np.asarray(labels, int), minlength=num_classes).astype(float)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return (inverse / inverse.sum()).tolist()
