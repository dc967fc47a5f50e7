"""Serving stage: the inference pipeline (raw film -> 4 class probabilities), its builder, checks and server.

`export` saves the pipeline, `predict` and `explain` run it, `serve` answers TF Serving's REST API with an
export on KServe's ModelServer (`kserve_app`, `rest_protocol`); nothing here imports the exporter.
"""
