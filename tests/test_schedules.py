"""Epoch learning-rate schedules: MultiStepLR semantics, with milestones as epochs or fractions of a run."""

import pytest

from tfflannel.schedules import scale_milestones, step_decay


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
