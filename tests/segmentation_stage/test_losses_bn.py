"""Pixel-weighted cross-entropy against NumPy; precise BN against direct batch statistics."""

import keras
import numpy as np
import pytest

from tfflannel.models.fc_densenet import build_fc_densenet
from tfflannel.models.losses import PixelWeightedCrossentropy
from tfflannel.models.precise_bn import recompute_batchnorm_statistics


def _batch_and_crossentropy(seed):
    """Random 4-class probabilities and labels, class weights and the weighted cross-entropy by NumPy."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2, 5, 6, 4))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = rng.integers(0, 4, size=(2, 5, 6))
    weights = np.array([0.5, 1.0, 1.0, 1.0])
    picked = np.take_along_axis(probs, labels[..., None], -1)[..., 0]
    return probs, labels, weights, np.sum(weights[labels] * -np.log(picked)) / np.sum(weights[labels])


def test_pixel_weighted_crossentropy_matches_numpy():
    probs, labels, weights, expected = _batch_and_crossentropy(0)
    loss = PixelWeightedCrossentropy(weights)(labels, probs.astype(np.float32))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_loss_serialises():
    loss = PixelWeightedCrossentropy([0.5, 1.0])
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert clone.class_weights == [0.5, 1.0]


def test_precise_bn_sets_moving_stats_to_batch_average():
    model = build_fc_densenet("fcdn_small", input_shape=(32, 32, 1))
    x = np.random.default_rng(1).random((8, 32, 32, 1), dtype=np.float32) * 3 + 1
    assert recompute_batchnorm_statistics(model, [x[:4], x[4:]]) == 2
    features = np.asarray(keras.Model(model.input, model.get_layer("first_conv").output)(x))
    bn = model.get_layer("down1_layer1_bn")
    np.testing.assert_allclose(np.asarray(bn.moving_mean), features.mean(axis=(0, 1, 2)), atol=1e-4)
    assert bn.momentum == pytest.approx(0.9), "momentum restored"
    assert model.get_layer("down1_layer1_drop").rate == pytest.approx(0.2), "dropout restored"


@pytest.mark.parametrize("lung_classes", [[1], [2, 3]])
def test_dice_weighted_crossentropy_matches_numpy(lung_classes):
    from tfflannel.models.losses import segmentation_loss

    probs, labels, weights, crossentropy = _batch_and_crossentropy(2)
    truth, predicted = np.isin(labels, lung_classes), probs[..., lung_classes].sum(-1)
    dice = 1.0 - 2.0 * np.sum(truth * predicted) / (truth.sum() + predicted.sum())
    loss = segmentation_loss("dice_weighted_ce", weights, lung_classes)
    assert float(loss(labels, probs.astype(np.float32))) == pytest.approx(dice + crossentropy, rel=1e-5)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert clone.lung_classes == lung_classes and float(clone(labels, probs.astype(np.float32))) == pytest.approx(
        dice + crossentropy, rel=1e-5)
    with pytest.raises(ValueError, match="segmentation.loss"):
        segmentation_loss("focal", weights, lung_classes)
