"""Serving stage: the inference pipeline (raw film -> 4 class probabilities), its builder and the served checks.

`export` saves the pipeline, `predict` and `explain` run it; nothing here imports the exporter.
"""
