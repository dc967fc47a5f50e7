r"""Images/s the model itself takes: training steps and batched inference of a base learner.

The other half of "is the pipeline or the model the bottleneck?": `bench_patches.py` measures
how fast the tf.data pipeline feeds patches; this script measures how fast a FLANNEL backbone
consumes them, with the training recipe of `train-patch` (AdamW, cross-entropy), on a fixed
in-memory batch so that no input pipeline is timed. Plain Keras 3 and NumPy, no TensorFlow import
of its own, so it also runs under `KERAS_BACKEND=jax` on a GPU host without TensorFlow. Prints one
line per backbone (and appends it to --csv as soon as it is measured); asserts nothing.

    python tools/bench_train_step.py --backbone densenet161 --batch 8 --steps 3
    KERAS_BACKEND=jax python tools/bench_train_step.py --backbone flannel --batch 64 \\
        --precision mixed_bfloat16 --csv results.csv
"""

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfflannel.backbone_names import TORCHVISION_BACKBONE_NAMES  # noqa: E402
from tfflannel.models.backbones import backbone_config, list_backbones  # noqa: E402
from tfflannel.models.classifier import build_classifier  # noqa: E402

FLANNEL_BACKBONES = TORCHVISION_BACKBONE_NAMES   # the paper's five (torchvision layout), defined once
CSV_FIELDS = ("backend", "device", "backbone", "size", "batch", "precision", "train_images_per_s",
              "infer_images_per_s")


def device_name():
    """What the model runs on, in words: the backend's first device."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}:{getattr(device, 'device_kind', device)}"
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    if backend == "torch":
        import torch

        return f"cuda:{torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"
    return backend


def measure_model(backbone, batch, steps, size=None, precision="float32", warmup=2, seed=0):
    """Images/s of `steps` training steps and of `steps` inference calls on one fixed batch.

    The first `warmup` calls of each (tracing/compilation) are left out of the timing.

    Args:
        backbone: str. A registered backbone name (`list_backbones()`).
        batch: int. Images per step.
        steps: int. Timed training steps and timed inference calls.
        size: int or None. Patch side; `None` uses the backbone's native input size. Defaults to `None`.
        precision: str. Keras dtype policy while the model is built (`float32`, `mixed_float16`,
            `mixed_bfloat16`); the global policy is restored afterwards. Defaults to `"float32"`.
        warmup: int. Untimed calls before each measurement. Defaults to `2`.
        seed: int. Seeds weight init and the random batch. Defaults to `0`.

    Returns:
        (size, train_images_per_s, infer_images_per_s): the side used and the two rates.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        keras.utils.set_random_seed(seed)
        size = size or backbone_config(backbone).input_size
        model = build_classifier(backbone, size)
        model.compile(optimizer=keras.optimizers.AdamW(1e-5, weight_decay=1e-4),
                      loss=keras.losses.SparseCategoricalCrossentropy())
    finally:
        keras.mixed_precision.set_global_policy(previous)     # the model keeps its dtypes; callers keep theirs
    rng = np.random.default_rng(seed)
    patches = rng.uniform(0, 255, (batch, size, size, 1)).astype("float32")
    labels = rng.integers(0, 4, batch)
    rates = []
    for call in (lambda: model.train_on_batch(patches, labels), lambda: np.asarray(model.predict_on_batch(patches))):
        for _ in range(warmup):
            call()
        started = time.perf_counter()
        for _ in range(steps):
            call()                        # each returns host values, so every step has finished when timed
        rates.append(batch * steps / (time.perf_counter() - started))
    return size, rates[0], rates[1]


def main():
    """Parse the options, measure each requested backbone, print (and optionally append to --csv) its rates."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", nargs="+", default=["mobilenet_v2"],
                        help=f"registered names, or 'flannel' for the paper's five ({', '.join(FLANNEL_BACKBONES)}): "
                        + ", ".join(list_backbones()))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, help="patch side; defaults to each backbone's native size")
    parser.add_argument("--precision", default="float32", choices=("float32", "mixed_float16", "mixed_bfloat16"))
    parser.add_argument("--csv", help="append one row per backbone here, as soon as it is measured")
    args = parser.parse_args()
    names = [n for name in args.backbone for n in (FLANNEL_BACKBONES if name == "flannel" else (name,))]
    unknown = sorted(set(names) - set(list_backbones()))
    if unknown:
        parser.error(f"unknown backbone(s) {unknown}; registered: {', '.join(list_backbones())}")
    backend, device = keras.backend.backend(), device_name()
    print(f"backend {backend}, device {device}, batch {args.batch}, {args.steps} timed steps, {args.precision}")
    for name in names:
        size, train_rate, infer_rate = measure_model(name, args.batch, args.steps, args.size, args.precision,
                                                     args.warmup)
        print(f"{name:18s} {size:4d} px   train {train_rate:9.1f} images/s   inference {infer_rate:9.1f} images/s",
              flush=True)
        if args.csv:
            path = Path(args.csv)
            new = not path.exists()
            with path.open("a", newline="") as handle:
                writer = csv.writer(handle)
                if new:
                    writer.writerow(CSV_FIELDS)
                writer.writerow((backend, device, name, size, args.batch, args.precision,
                                 f"{train_rate:.1f}", f"{infer_rate:.1f}"))


if __name__ == "__main__":
    main()
