"""Images/s of batched K-patch inference versus one forward pass per patch: same model, same patches.

The original ran its K patches as K passes over the data loader, one patch per image per pass
(the paper's main speed complaint); predict-base sends B images x K patches through the model in
one call. Prints both rates and the ratio; asserts nothing.

    python tools/bench_inference.py [--backbone mobilenet_v2] [--k 32] [--images 4] [--size 224]
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tfflannel.models.backbones import list_backbones  # noqa: E402
from tfflannel.models.classifier import build_classifier  # noqa: E402


def main():
    """Parse the options, time both ways of running the same random patches, print rates and ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_v2", choices=list_backbones())
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-images", type=int, default=2, help="images per batched call (B)")
    args = parser.parse_args()
    model = build_classifier(args.backbone, args.size)
    shape = (args.images, args.k, args.size, args.size, 1)
    patches = np.random.default_rng(0).integers(0, 255, shape).astype(np.float32)
    model.predict_on_batch(patches[0, :1])  # warm-up both call shapes
    model.predict_on_batch(patches[:args.batch_images].reshape(-1, args.size, args.size, 1))

    started = time.perf_counter()
    batched = []
    for start in range(0, args.images, args.batch_images):
        chunk = patches[start:start + args.batch_images]
        batched.append(np.asarray(model.predict_on_batch(chunk.reshape(-1, args.size, args.size, 1))))
    batched_rate = args.images / (time.perf_counter() - started)

    started = time.perf_counter()
    single = [
        np.asarray(model.predict_on_batch(patches[i, j:j + 1])) for i in range(args.images) for j in range(args.k)
    ]
    single_rate = args.images / (time.perf_counter() - started)

    same = np.allclose(np.concatenate(batched), np.concatenate(single), atol=1e-4)
    print(f"backbone {args.backbone}, K={args.k}, patch {args.size}, {args.images} images, B={args.batch_images}")
    print(f"batched (B x K per call) : {batched_rate:8.2f} images/s ({batched_rate * args.k:8.1f} patches/s)")
    print(f"one patch per call       : {single_rate:8.2f} images/s ({single_rate * args.k:8.1f} patches/s)")
    print(f"ratio                    : {batched_rate / single_rate:8.2f}x   (same outputs: {same})")


if __name__ == "__main__":
    main()
