"""Lung segmentation stage: pre-/post-processing, readers, training, and the masked-image cache."""
