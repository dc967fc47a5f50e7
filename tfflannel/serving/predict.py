"""`predict`: run an exported pipeline (or run directories) on PNG, JPEG and DICOM files.

Files are decoded by `data.io.read_image` (so 16-bit PNG and DICOM work), grouped
by size into batches for the `predict_uint8` signature, and reported one record
per file; a file that cannot be read is reported by name and the others still run.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from tfflannel import CLASS_NAMES
from tfflannel.data.io import IMAGE_SUFFIXES, ImageReadError, read_image

QUALITY_OUTPUTS = ("mask_confidence", "flip_disagreement")


def latest_version(export_dir):
    """EXPORT_DIR itself if it holds saved_model.pb, else its highest numeric version folder."""
    export_dir = Path(export_dir)
    if (export_dir / "saved_model.pb").is_file():
        return export_dir
    versions = sorted((int(p.name), p) for p in export_dir.iterdir() if p.is_dir() and p.name.isdigit()) \
        if export_dir.is_dir() else []
    if not versions:
        raise FileNotFoundError(f"{export_dir}: no SavedModel (expected saved_model.pb or <version>/saved_model.pb)")
    return versions[-1][1]


def load_exported(export_dir):
    """The `predict_uint8` signature of an export, as a callable on (B, H, W, 1) uint8."""
    loaded = tf.saved_model.load(str(latest_version(export_dir)))
    signature = loaded.signatures["predict_uint8"]
    return lambda images: signature(images=tf.constant(images))


def expand_inputs(paths):
    """Files as given, folders expanded to the image files below them (sorted)."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    return files


def predict_files(predict_fn, paths, batch_size=4, progress=True):
    """Returns (records, failures): records in input order with file, probabilities, label, lung_fraction, mask_ok.

    Also `mask_confidence` and `flip_disagreement` where the pipeline outputs them (an export made before
    they existed does not).

    Images are read one by one and held only until a batch of their size is full, so a large folder is never
    all in memory at once.
    """
    files = expand_inputs(paths)
    results, failures, pending = {}, [], collections.defaultdict(dict)
    bar = tqdm(total=len(files), desc="predict", unit="img", disable=not progress)

    def run_batch(shape):
        chunk = pending.pop(shape)
        outputs = predict_fn(np.stack(list(chunk.values()))[..., None])
        outputs = {key: np.asarray(value) for key, value in outputs.items()}
        for index, path in enumerate(chunk):
            probabilities = outputs["probabilities"][index]
            results[path] = {
                "file": str(path),
                "probabilities": {c: round(float(p), 6) for c, p in zip(CLASS_NAMES, probabilities, strict=True)},
                "label": CLASS_NAMES[int(np.argmax(probabilities))],
                "lung_fraction": round(float(outputs["lung_fraction"][index]), 4),
                "mask_ok": bool(outputs["mask_ok"][index]),
                **{name: round(float(outputs[name][index]), 4) for name in QUALITY_OUTPUTS if name in outputs},
            }
        bar.update(len(chunk))

    for path in files:
        try:
            image = read_image(path)[0]
        except ImageReadError as error:
            failures.append({"file": str(path), "error": error.reason})
            bar.update(1)
            continue
        pending[image.shape][path] = image
        if len(pending[image.shape]) == batch_size:
            run_batch(image.shape)
    for shape in list(pending):
        run_batch(shape)
    bar.close()
    return [results[p] for p in files if p in results], failures
