"""Images/s of `segment` versus the original per-image approach, side by side on the same images.

tfflannel: the film pipeline in TensorFlow ops (equalisation, letterbox, batched segmenter, connected-component
clean-up, QC, 1024 masked view), PNG TFRecord shards, keyed index. Original (Patched FLANNEL `inference.py` +
`save_masked`): per image load, pre-process, predict (batches of 8), re-load and pre-process a second time, PIL
bicubic resize of image and mask to 1024x1024, multiply and `np.savez_compressed` a float32 array. Both use the
shipped segmenter and are warmed up first (graph tracing), so only the pipeline differs. The two alternate
`--repeats` times; the best of each is printed with the ratio. Asserts nothing.

With `--versus SEGMENTER` (a train-seg run directory, `.keras` file or descriptor JSON) it times `segment` with
the shipped segmenter and with that one instead, alternating the same way: the cost of shipping a candidate.

    python tools/bench_segment.py [--images N] [--data DIR_OF_PNGS] [--repeats R] [--versus SEGMENTER]
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from tfflannel.data.manifest import prepare_manifest  # noqa: E402
from tfflannel.film_pipeline import equalize_gamma_tf  # noqa: E402
from tfflannel.segmentation.cache import CacheSettings, build_cache  # noqa: E402
from tfflannel.segmentation.inference import load_segmenter  # noqa: E402


def original_pipeline(paths, segmenter, out_dir):
    """Masks `paths` the way the original Patched FLANNEL scripts do, one `.npz` per image in `out_dir`.

    Per batch of 8: load, equalise, PIL-resize to the segmenter size, predict; then per image load and
    equalise again, argmax mask resized to the film, bicubic 1024x1024 image and mask, their product saved
    with `np.savez_compressed` as float32.

    Args:
        paths: list of str or Path. Grey-scale image files.
        segmenter: Segmenter. Its `model` and `input_size` are used.
        out_dir: Path. Existing folder for the `.npz` files.
    """
    model, size = segmenter.model, segmenter.input_size

    def equalize(image):
        return equalize_gamma_tf(tf.constant(image)).numpy()

    for start in range(0, len(paths), 8):
        chunk = paths[start:start + 8]
        batch = []
        for path in chunk:
            image = np.asarray(Image.open(path).convert("L"))
            pre = equalize(image)
            batch.append(np.asarray(Image.fromarray(pre, mode="F").resize((size, size)))[..., None] / 255.0)
        probs = np.asarray(model.predict_on_batch(np.stack(batch).astype(np.float32)))
        for path, prob in zip(chunk, probs, strict=True):
            image = np.asarray(Image.open(path).convert("L"))           # loaded and pre-processed a second time
            pre = equalize(image)
            mask = Image.fromarray(prob.argmax(-1).astype(np.uint8)).resize(image.shape[::-1], Image.NEAREST)
            big_image = np.asarray(Image.fromarray(pre, mode="F").resize((1024, 1024), Image.BICUBIC))
            big_mask = np.round(np.asarray(mask.resize((1024, 1024), Image.BICUBIC), np.float32))
            np.savez_compressed(out_dir / (Path(path).stem + ".npz"), image=(big_image * big_mask).astype(np.float32))


def time_segment(work, segmenter, images):
    """Rebuilds the segment cache of `work` from scratch with `segmenter`.

    Args:
        work: Path. A prepared work folder; its `cache/` is removed first.
        segmenter: Segmenter.
        images: int. Number of images in the manifest.

    Returns:
        float. Images per second.
    """
    shutil.rmtree(work / "cache", ignore_errors=True)
    started = time.perf_counter()
    build_cache(work, segmenter, CacheSettings(shard_size=64), progress=False)
    return images / (time.perf_counter() - started)


def versus(work, images, shipped, candidate, repeats):
    """Times `segment` with the shipped and a candidate segmenter alternately and prints the best of each.

    Args:
        work: Path. A prepared work folder.
        images: int. Number of images in it.
        shipped: Segmenter. The default of `segment`.
        candidate: Segmenter. The one that would replace it.
        repeats: int.
    """
    for segmenter in (shipped, candidate):                                                # warm-up: tracing
        time_segment(work, segmenter, images)
    rates = {"shipped": [], "candidate": []}
    for _ in range(repeats):
        rates["shipped"].append(time_segment(work, shipped, images))
        rates["candidate"].append(time_segment(work, candidate, images))
    for name, segmenter in (("shipped", shipped), ("candidate", candidate)):
        print(f"{name:9s} {segmenter.model.count_params():>9,d} parameters, {segmenter.input_size} px: "
              f"{max(rates[name]):7.2f} images/s  all: "
              + ", ".join(f"{v:.2f}" for v in rates[name]))
    print(f"time ratio, candidate / shipped: {max(rates['shipped']) / max(rates['candidate']):.2f}x")


def main():
    """Parses the command line, times both pipelines alternately `--repeats` times and prints the best of each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--data", help="a DIR/<label>/*.png folder (default: the bundled sample)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--versus", metavar="SEGMENTER", help="time `segment` with the shipped segmenter and this one")
    args = parser.parse_args()
    from tfflannel.sample import CLS_DIR

    source = Path(args.data) if args.data else CLS_DIR
    segmenter = load_segmenter()
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        files = sorted(source.glob("*/*.png"))[: args.images]
        for path in files:
            (data / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, data / path.parent.name / path.name)
        prepare_manifest(tmp / "work", folders=[data], folds=2, test_size=0.5, progress=False)
        paths = [str(p) for p in sorted(data.glob("*/*.png"))]
        if args.versus:
            print(f"images: {len(files)} from {source}; best of {args.repeats}, alternating; "
                  f"load average {os.getloadavg()[0]:.1f}")
            versus(tmp / "work", len(files), segmenter, load_segmenter(args.versus), args.repeats)
            return
        time_segment(tmp / "work", segmenter, len(files))                                    # warm-up: tracing
        original_pipeline(paths[:8], segmenter, tmp)                                        # warm-up
        for _ in range(args.repeats):
            ours.append(time_segment(tmp / "work", segmenter, len(files)))
            shutil.rmtree(tmp / "npz", ignore_errors=True)
            (tmp / "npz").mkdir()
            started = time.perf_counter()
            original_pipeline(paths, segmenter, tmp / "npz")
            theirs.append(len(files) / (time.perf_counter() - started))
        npz = sum(p.stat().st_size for p in (tmp / "npz").glob("*.npz"))
        shards = sum(p.stat().st_size for p in (tmp / "work" / "cache").glob("shard-*"))
    print(f"images: {len(files)} from {source}; best of {args.repeats}, alternating; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"tfflannel segment : {max(ours):7.2f} images/s  (cache {shards / 1e6:.1f} MB, PNG uint8)  all: "
          + ", ".join(f"{v:.1f}" for v in ours))
    print(f"original approach : {max(theirs):7.2f} images/s  (cache {npz / 1e6:.1f} MB, float32 npz)  all: "
          + ", ".join(f"{v:.1f}" for v in theirs))
    print(f"ratio             : {max(ours) / max(theirs):7.2f}x faster, {npz / max(shards, 1):.1f}x smaller")


if __name__ == "__main__":
    main()
