"""Export stage: one SavedModel that takes a raw image and returns the four class probabilities."""
