"""Write an InferencePipeline as a SavedModel in TF Serving's EXPORT_DIR/<version>/ layout (the `export` command).

The pipeline itself (`tfflannel.serving`) is what `predict --runs` and `explain` run too; this module only saves it.
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorflow as tf

from tfflannel import CLASS_NAMES, DISCLAIMER
from tfflannel.serving.encoded_guard import IMAGE_LIMITS_FILE


def new_version_dir(export_dir, version):
    """EXPORT_DIR/<version>, refused if it exists: an export never overwrites one TF Serving may be serving."""
    target = Path(export_dir) / str(version)
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another --version (TF Serving serves the highest)")
    return target


def export_pipeline(pipeline, export_dir, version=1):
    """Write EXPORT_DIR/<version>/ (saved_model.pb, variables/, assets.extra/) for TF Serving."""
    target = new_version_dir(export_dir, version)
    signatures = {"serving_default": pipeline.serve_encoded, "predict_uint8": pipeline.serve_uint8}
    tmp = Path(export_dir) / f".{version}.partial"
    tf.saved_model.save(pipeline, str(tmp), signatures=signatures)
    extra = tmp / "assets.extra"
    extra.mkdir(exist_ok=True)
    (extra / "class_names.json").write_text(json.dumps(list(CLASS_NAMES)))
    (extra / IMAGE_LIMITS_FILE).write_text(json.dumps(pipeline.image_limits()))
    (extra / "README.txt").write_text(
        f"tfflannel pipeline export. Classes in output order: {', '.join(CLASS_NAMES)}.\n"
        f"K={pipeline.k} patches, seed {pipeline.seed}, score '{pipeline.score}', view {pipeline.view}.\n"
        f"Ensemble temperature: {'none (T = 1)' if pipeline.temperature is None else pipeline.temperature}.\n"
        f"serving_default refuses images over {pipeline.max_megapixels:g} megapixels (data.max_megapixels) or under "
        f"{pipeline.min_side} px a side (data.min_side), read from their headers before decoding.\n"
        f"{DISCLAIMER}\n")
    tmp.rename(target)
    return target
