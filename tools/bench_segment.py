"""Images/s of `segment` versus the original per-image approach, side by side on the same images.

tfflannel: batched pre-processing + inference + post-processing + 1024 letterbox + PNG TFRecord shards.
Original (Patched FLANNEL `inference.py` + `save_masked`): per image load, pre-process, predict (batches of 8),
re-load and pre-process a second time, PIL bicubic resize of image and mask to 1024x1024, multiply and
`np.savez_compressed` a float32 array. Both use the shipped segmenter, so only the pipeline differs.
Prints the ratio; asserts nothing.

    python tools/bench_segment.py [--images N] [--data DIR_OF_PNGS]
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
from PIL import Image  # noqa: E402

from tfflannel.data.manifest import prepare_manifest  # noqa: E402
from tfflannel.segmentation.cache import CacheSettings, build_cache  # noqa: E402
from tfflannel.segmentation.inference import load_segmenter  # noqa: E402
from tfflannel.segmentation.preprocess import equalize_gamma  # noqa: E402


def original_pipeline(paths, segmenter, out_dir):
    model, size = segmenter.model, segmenter.input_size
    for start in range(0, len(paths), 8):
        chunk = paths[start:start + 8]
        batch = []
        for path in chunk:
            image = np.asarray(Image.open(path).convert("L"))
            pre = equalize_gamma(image)
            batch.append(np.asarray(Image.fromarray(pre, mode="F").resize((size, size)))[..., None] / 255.0)
        probs = np.asarray(model.predict_on_batch(np.stack(batch).astype(np.float32)))
        for path, prob in zip(chunk, probs, strict=True):
            image = np.asarray(Image.open(path).convert("L"))           # loaded and pre-processed a second time
            pre = equalize_gamma(image)
            mask = Image.fromarray(prob.argmax(-1).astype(np.uint8)).resize(image.shape[::-1], Image.NEAREST)
            big_image = np.asarray(Image.fromarray(pre, mode="F").resize((1024, 1024), Image.BICUBIC))
            big_mask = np.round(np.asarray(mask.resize((1024, 1024), Image.BICUBIC), np.float32))
            np.savez_compressed(out_dir / (Path(path).stem + ".npz"), image=(big_image * big_mask).astype(np.float32))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--data", help="a DIR/<label>/*.png folder (default: the bundled sample)")
    args = parser.parse_args()
    from tfflannel.sample import CLS_DIR

    source = Path(args.data) if args.data else CLS_DIR
    segmenter = load_segmenter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        files = sorted(source.glob("*/*.png"))[: args.images]
        for path in files:
            (data / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, data / path.parent.name / path.name)
        prepare_manifest(tmp / "work", folders=[data], folds=2, test_size=0.5, progress=False)
        segmenter.predict([np.zeros((64, 64), np.uint8)] * 8)          # warm-up (graph tracing) for both
        started = time.perf_counter()
        build_cache(tmp / "work", segmenter, CacheSettings(shard_size=64), progress=False)
        ours = len(files) / (time.perf_counter() - started)
        (tmp / "npz").mkdir()
        started = time.perf_counter()
        original_pipeline([str(p) for p in sorted(data.glob("*/*.png"))], segmenter, tmp / "npz")
        theirs = len(files) / (time.perf_counter() - started)
        npz = sum(p.stat().st_size for p in (tmp / "npz").glob("*.npz"))
        shards = sum(p.stat().st_size for p in (tmp / "work" / "cache").glob("shard-*"))
    print(f"images: {len(files)} from {source}")
    print(f"tfflannel segment : {ours:7.2f} images/s  (cache {shards / 1e6:.1f} MB, PNG uint8)")
    print(f"original approach : {theirs:7.2f} images/s  (cache {npz / 1e6:.1f} MB, float32 npz)")
    print(f"ratio             : {ours / theirs:7.2f}x faster, {npz / max(shards, 1):.1f}x smaller")


if __name__ == "__main__":
    main()
