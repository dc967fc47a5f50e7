"""Ensemble stage: FLANNEL fitted on out-of-fold base-learner predictions joined by image id."""
