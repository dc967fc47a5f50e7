"""Learning-rate schedules by epoch, shared by the segmenter, the base learners and the ensemble.

The originals used PyTorch's MultiStepLR: lr x 0.1 at fixed epochs. Some of our configs give
those epochs as fractions of the run (so a shortened run keeps the shape of the recipe), the
ensemble gives them as epochs; `scale_milestones` turns the first into the second.
"""

from __future__ import annotations


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
