"""Explanations: Grad-CAM for global learners, probabilistic (patch) Grad-CAM for patched learners."""
