"""Learning-rate schedules by epoch, shared by the segmenter, the base learners and the ensemble.

The originals used PyTorch's MultiStepLR: lr x 0.1 at fixed epochs. Some of our configs give
those epochs as fractions of the run (so a shortened run keeps the shape of the recipe), the
ensemble gives them as epochs; `scale_milestones` turns the first into the second.
"""

from __future__ import annotations


def scale_milestones(fractions, epochs):
    """Fractions of a run -> epochs: (0.7, 0.8, 0.9) of 100 epochs -> (70, 80, 90)."""
    return tuple(sorted(int(round(f * epochs)) for f in fractions))


def step_decay(milestone_epochs, learning_rate, factor=0.1):
    """Epoch (0-based) -> learning rate x factor per milestone reached, as MultiStepLR.

    Usable as `keras.callbacks.LearningRateScheduler(step_decay(...))`.
    """
    milestones = tuple(sorted(int(m) for m in milestone_epochs))

    def schedule(epoch, lr=None):
        return learning_rate * factor ** sum(epoch >= m for m in milestones)

    return schedule
