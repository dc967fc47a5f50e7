"""tfflannel: Patched FLANNEL for chest X-ray classification in TensorFlow/Keras.

Research use only. This software is not a medical device and must not be used
for diagnosis or treatment decisions.
"""

__version__ = "0.2.0"

CLASS_NAMES = ("covid19", "viral_pneumonia", "bacterial_pneumonia", "normal")
"""The four labels, in the order used for every score vector and model output."""

DISCLAIMER = (
    "RESEARCH USE ONLY: tfflannel is not a diagnostic device; its outputs must not "
    "be used for clinical decisions."
)
