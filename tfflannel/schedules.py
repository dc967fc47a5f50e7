"""Learning-rate schedules by epoch, shared by the segmenter, the base learners and the ensemble.

The originals used PyTorch's MultiStepLR: lr x 0.1 at fixed epochs. Some of our configs give
those epochs as fractions of the run (so a shortened run keeps the shape of the recipe), the
ensemble gives them as epochs; `scale_milestones` turns the first into the second. `cosine_decay` is the
alternative for the segmenter (`segmentation.lr_schedule: cosine`), PyTorch's CosineAnnealingLR by epoch.
"""

from __future__ import annotations

import math


def scale_milestones(fractions, epochs):
    """Fractions of a run -> epochs: (0.7, 0.8, 0.9) of 100 epochs -> (70, 80, 90).

    Args:
        fractions: iterable of float. Milestones as fractions of the run (values are not range-checked).
        epochs: int. Length of the run in epochs.

    Returns:
        tuple of int. `round(fraction * epochs)` for each fraction (Python's round, half to even), sorted.
    """
    return tuple(sorted(int(round(f * epochs)) for f in fractions))


def step_decay(milestone_epochs, learning_rate, factor=0.1):
    """Epoch (0-based) -> learning rate x factor per milestone reached, as MultiStepLR.

    Usable as `keras.callbacks.LearningRateScheduler(step_decay(...))`.

    Args:
        milestone_epochs: iterable of int. 0-based epochs at which the rate is multiplied by `factor`
            (a repeated milestone multiplies twice, as in MultiStepLR).
        learning_rate: float. Rate before the first milestone.
        factor: float. Multiplier per milestone reached. Defaults to `0.1`.

    Returns:
        callable `schedule(epoch, lr=None) -> float` giving
        `learning_rate * factor ** (number of milestones <= epoch)`; `lr` (the current rate Keras
        passes) is ignored, so the schedule is a pure function of the epoch and resumes exactly.

    Example:
        >>> step_decay((2, 4), 1.0)(3)
        0.1
    """
    milestones = tuple(sorted(int(m) for m in milestone_epochs))

    def schedule(epoch, lr=None):
        return learning_rate * factor ** sum(epoch >= m for m in milestones)

    return schedule


def cosine_decay(epochs, learning_rate, minimum=0.0):
    """Epoch (0-based) -> `minimum + (learning_rate - minimum) * (1 + cos(pi * epoch / epochs)) / 2`.

    PyTorch's CosineAnnealingLR with `T_max = epochs` (Keras' `CosineDecay` with `decay_steps = epochs`, by epoch):
    the rate falls smoothly from `learning_rate` at epoch 0 towards `minimum` at the end of the run. Usable as
    `keras.callbacks.LearningRateScheduler(cosine_decay(...))`; a pure function of the epoch, so it resumes exactly.

    Args:
        epochs: int. Length of the run in epochs.
        learning_rate: float. Rate at epoch 0.
        minimum: float. Rate the curve ends at. Defaults to `0.0`.

    Returns:
        callable `schedule(epoch, lr=None) -> float` (`lr`, the current rate Keras passes, is ignored).

    Example:
        >>> cosine_decay(4, 1.0)(2)
        0.5
    """
    epochs = max(int(epochs), 1)

    def schedule(epoch, lr=None):
        return minimum + (learning_rate - minimum) * (1.0 + math.cos(math.pi * min(epoch, epochs) / epochs)) / 2.0

    return schedule
