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
    """(B, D) -> (B, D * D): the flattened outer product f f^T of each row.

    Row-major flattening: output index `i * D + j` holds `f_i * f_j`. `D` must be
    static (known when the layer is built). No weights.
    """

    def call(self, inputs):
        """Return the flattened outer products.

        Args:
            inputs: tensor of shape `(B, D)`, float.

        Returns:
            tensor of shape `(B, D * D)`, same dtype as `inputs`.
        """
        outer = ops.einsum("bi,bj->bij", inputs, inputs)
        return ops.reshape(outer, (-1, inputs.shape[-1] * inputs.shape[-1]))

    def compute_output_shape(self, input_shape):
        """Return `(B, D * D)` for an input shape `(B, D)`."""
        return (input_shape[0], input_shape[-1] ** 2)


@keras.saving.register_keras_serializable(package="tfflannel")
class WeightedLearnerSum(layers.Layer):
    """sum_i w_i p_i for weights (B, L) and learner scores (B, L * C) -> (B, C).

    The scores are the L learners' C-class score vectors concatenated learner by
    learner (learner 0's C scores first). No weights.

    Args:
        num_classes: int. C, the number of classes per learner.
        **kwargs: standard `keras.layers.Layer` arguments (`name`, `dtype`, ...).
    """

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)

    def call(self, inputs):
        """Return the learner-weighted sum of scores.

        Args:
            inputs: pair `(weights, scores)`: weights of shape `(B, L)` with static `L`,
                scores of shape `(B, L * C)`.

        Returns:
            tensor of shape `(B, C)`: `sum_i weights[:, i] * scores_i`, not renormalised.
        """
        weights, scores = inputs
        per_learner = ops.reshape(scores, (-1, weights.shape[-1], self.num_classes))
        return ops.sum(per_learner * ops.expand_dims(weights, -1), axis=1)

    def compute_output_shape(self, input_shape):
        """Return `(B, C)` for input shapes `((B, L), (B, L * C))`."""
        return (input_shape[0][0], self.num_classes)

    def get_config(self):
        """Return the layer config, with `num_classes`, for Keras serialisation."""
        return {**super().get_config(), "num_classes": self.num_classes}


def build_ensemble(kind="genet", num_learners=5, num_classes=4):
    """Build an ensemble model over `num_learners` x `num_classes` scores.

    Args:
        kind: str. `genet` (FLANNEL's neural weight module, tanh weights), `flannel` (softmax weights) or `mlp`.
            Defaults to `"genet"`.
        num_learners: int. Base learners (any number; five in FLANNEL). Defaults to `5`.
        num_classes: int. Classes per learner. Defaults to `4`.

    Returns:
        keras.Model named `{kind}_ensemble`: input `scores` (B, L*C) float, the learners' score
        vectors concatenated learner by learner -> (B, C) float32 softmax probabilities.
        GENet/FLANNEL also expose the `learner_weights` layer output (B, L).

    Raises:
        ValueError: if `kind` is not one of `ENSEMBLE_KINDS`.
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

    Args:
        labels: sequence of int. Class indices of the training labels, in `[0, num_classes)`.
        num_classes: int. Number of classes C.

    Returns:
        list of float of length C: `(1 / n_c) / sum_k(1 / n_k)` over the classes present;
        a class with no training label gets `0.0`.
    """
    import numpy as np

    counts = np.bincount(np.asarray(labels, int), minlength=num_classes).astype(float)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return (inverse / inverse.sum()).tolist()
