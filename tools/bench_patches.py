"""Patches/s of the tf.data patch pipeline versus the original per-patch approach, on the same images.

tfflannel: TFRecord cache read + PNG decode + joint lung-centre sampling + one vectorised
crop_and_resize per batch, measured twice: as it feeds the model (grey float32 patches; the
ImageNet scaling is the model's first layer and runs wherever the model runs), and with that
scaling forced onto the CPU inside the pipeline. Original (Patched FLANNEL customloader): for every
patch, reload the 1024x1024 float32 npz, np.nonzero, draw row and column independently, crop
(truncated at borders) and PIL-resize to the patch size. Prints both rates and their ratio; asserts
nothing. Uses the bundled sample unless --data names a work directory with a cache.

With --model BACKBONE it also measures, in the same run on the same host, how many images/s that
backbone trains and infers on (tools/bench_train_step.py, default device: the GPU where TensorFlow
sees one) and prints pipeline / model: above 1, the model, not the pipeline, is the bottleneck.

    python tools/bench_patches.py [--data WORKDIR] [--k 100] [--size 224] [--model densenet161 --batch 8]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tfflannel.models.classifier import GrayToImageNet  # noqa: E402
from tfflannel.patches.pipeline import evaluation_dataset  # noqa: E402
from tfflannel.segmentation.view_records import read_cache_records  # noqa: E402


def ensure_workdir(path):
    """Return the data directory to benchmark, building one from the bundled sample if none is given.

    Args:
        path: str or None. An existing data directory (manifest + segment cache), or `None`
            to run `prepare_manifest` and `build_cache` (shipped segmenter) on
            `tfflannel/sample/cls` in a new temporary directory.

    Returns:
        pathlib.Path. The data directory.
    """
    if path:
        return Path(path)
    from tfflannel.data.manifest import prepare_manifest
    from tfflannel.sample import CLS_DIR
    from tfflannel.segmentation.cache import CacheSettings, build_cache
    from tfflannel.segmentation.inference import load_segmenter

    work = Path(tempfile.mkdtemp(prefix="bench-patches-"))
    prepare_manifest(work, folders=[CLS_DIR], progress=False)
    build_cache(work, load_segmenter(), CacheSettings(shard_size=16), progress=False)
    return work


def original_patch(npz_path, size, rng):
    """Cut one patch the way the original PyTorch loader did, for the speed comparison.

    Row and column are drawn independently among the non-zero (lung) pixels, the
    crop (clipped to a 1024 x 1024 image) is resized with PIL bilinear and stacked
    to 3 channels without normalisation.

    Args:
        npz_path: str or `pathlib.Path`. Cache `.npz` file holding a float `image` (lung-masked film).
        size: int. Patch side in pixels.
        rng: `numpy.random.Generator`. Source of the patch centre.

    Returns:
        numpy.ndarray of shape `(3, size, size)`, float32.
    """
    image = np.load(npz_path)["image"]
    rows, cols = np.nonzero(image)
    r, c = rng.choice(rows), rng.choice(cols)             # independent draws, as the original
    half = size // 2
    crop = image[max(0, r - half):min(1024, r + half), max(0, c - half):min(1024, c + half)]
    patch = np.asarray(Image.fromarray(crop, mode="F").resize((size, size), Image.BILINEAR))
    return np.repeat(patch[None], 3, axis=0)              # ToTensor + 3 channels, no normalisation


def main():
    """Parse the options, time the tf.data patch pipeline against the original's loader (and optionally a model)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--original-patches", type=int, default=300)
    parser.add_argument("--model", help="also measure this backbone's training and inference images/s")
    parser.add_argument("--batch", type=int, default=8, help="batch of the --model measurement")
    parser.add_argument("--steps", type=int, default=3, help="timed steps of the --model measurement")
    args = parser.parse_args()
    work = ensure_workdir(args.data)
    scaling = GrayToImageNet("torch")

    def run_ours(scaled):
        count = 0
        dataset = evaluation_dataset(work, "all", 1, args.k, args.size, seed=0, images_per_batch=4)
        if scaled:
            dataset = dataset.map(lambda p, y, i: (scaling(p), y, i))
        for patches, _, _ in dataset:
            count += int(patches.shape[0])
        return count

    rates = {}
    for scaled in (False, True):
        run_ours(scaled)                                   # warm-up: tracing and tf.data autotuning
        best = 0.0
        for _ in range(3):                                 # best of three passes: less noise from the machine
            started = time.perf_counter()
            ours_count = run_ours(scaled)
            best = max(best, ours_count / (time.perf_counter() - started))
        rates[scaled] = best

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for record in read_cache_records(work / "cache"):
            path = Path(tmp) / (record["image_id"].replace(":", "_").replace("/", "_") + ".npz")
            np.savez_compressed(path, image=record["image"].astype(np.float32))
            paths.append(path)
        rng = np.random.default_rng(0)
        started = time.perf_counter()
        for index in range(args.original_patches):
            original_patch(paths[index % len(paths)], args.size, rng)
        theirs = args.original_patches / (time.perf_counter() - started)
    print(f"work directory                  : {work}  ({len(paths)} images, K={args.k}, patch {args.size})")
    print(f"tfflannel, as fed to the model  : {rates[False]:9.1f} patches/s ({ours_count} patches)")
    print(f"tfflannel + ImageNet scaling CPU: {rates[True]:9.1f} patches/s")
    print(f"original per patch              : {theirs:9.1f} patches/s ({args.original_patches} patches)")
    print(f"ratio (as fed to the model)     : {rates[False] / theirs:9.1f}x")
    print(f"ratio (scaling on the CPU too)  : {rates[True] / theirs:9.1f}x")
    if args.model:
        from bench_train_step import device_name, measure_model

        _, train_rate, infer_rate = measure_model(args.model, args.batch, args.steps, args.size)
        print(f"{args.model} on {device_name()}, batch {args.batch}: train {train_rate:.1f} images/s, "
              f"inference {infer_rate:.1f} images/s")
        print(f"pipeline / model training       : {rates[False] / train_rate:9.1f}x")
        print(f"pipeline / model inference      : {rates[False] / infer_rate:9.1f}x   "
              "(above 1: the model is the bottleneck)")


if __name__ == "__main__":
    main()
