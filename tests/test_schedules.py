"""Epoch learning-rate schedules: MultiStepLR semantics, with milestones as epochs or fractions of a run."""

import keras
import numpy as np
import pytest

from tfflannel.schedules import cosine_decay, scale_milestones, step_decay


def test_fractions_become_the_originals_epochs():
    assert scale_milestones((0.7, 0.8, 0.9), 100) == (70, 80, 90)
    assert scale_milestones((1.125, 0.75), 200) == (150, 225)        # FLANNEL: 150 and 225 of 200, sorted


def test_step_decay_matches_multisteplr():
    schedule = step_decay((2, 4), 1e-3)
    rates = [schedule(epoch) for epoch in range(6)]
    assert rates == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5])
    assert step_decay((), 0.5)(10) == 0.5


def test_a_short_run_keeps_the_shape_of_the_recipe():
    schedule = step_decay(scale_milestones((0.7, 0.8, 0.9), 10), 1.0)
    assert [schedule(e) for e in (6, 7, 8, 9)] == pytest.approx([1.0, 0.1, 0.01, 0.001])


def test_cosine_decay_is_keras_cosine_decay_by_epoch():
    """The oracle is Keras' own `CosineDecay`, stepped once per epoch (alpha = minimum / learning_rate)."""
    epochs, rate, minimum = 7, 2e-3, 2e-4
    oracle = keras.optimizers.schedules.CosineDecay(rate, decay_steps=epochs, alpha=minimum / rate)
    schedule = cosine_decay(epochs, rate, minimum)
    ours = [schedule(epoch) for epoch in range(epochs + 2)]
    np.testing.assert_allclose(ours, [float(oracle(epoch)) for epoch in range(epochs + 2)], rtol=1e-5)
    assert ours[0] == pytest.approx(rate) and all(a > b for a, b in zip(ours[:epochs], ours[1:epochs + 1], strict=True))
    assert ours[epochs] == ours[epochs + 1] == pytest.approx(minimum)      # held at the floor after the run
