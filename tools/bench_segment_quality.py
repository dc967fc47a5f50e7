"""What the mask confidence and flip disagreement cost `segment`, side by side on the same batches.

For each setting of the segmenter's `flip_tta` (off, on), two mask stages on the same prepared batches of 8:

- `masks only`: what `segment` ran before the numbers existed: `Segmenter.probabilities` (one pass, or two
  with flip TTA) then `film_pipeline.lung_masks`, XLA-compiled as in `ViewMaker`.
- `with quality`: what it runs now: `Segmenter.outputs` (always two passes) then
  `film_pipeline.segment_quality` (all masks cleaned in one batched call), XLA-compiled.

Then one whole `build_cache` (equalisation, both passes, clean-up, QC, 1024 views, PNG shards) for scale,
so the extra seconds can be read as a share of `segment`. Warm-up first; the two stages alternate
`--repeats` times and the best of each is printed with the ratio. Asserts nothing.

    python tools/bench_segment_quality.py [--images N] [--repeats R]
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

import tensorflow as tf  # noqa: E402

from tfflannel.data.io import read_image  # noqa: E402
from tfflannel.data.manifest import prepare_manifest  # noqa: E402
from tfflannel.film_pipeline import lung_masks, segment_quality  # noqa: E402
from tfflannel.segmentation.cache import CacheSettings, build_cache  # noqa: E402
from tfflannel.segmentation.inference import load_segmenter  # noqa: E402


def main():
    """Parses the command line, times both mask stages alternately for TTA off and on, then one build_cache."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seg", help="segmenter (default: the shipped one)")
    args = parser.parse_args()
    from tfflannel.sample import CLS_DIR

    segmenter = load_segmenter(args.seg)
    files = sorted(CLS_DIR.glob("*/*.png"))[: args.images]
    batches = []
    for start in range(0, len(files), 8):
        films = [read_image(path)[0] for path in files[start:start + 8]]
        inputs = tf.stack([segmenter.prepare(tf.constant(film))[0] for film in films])
        batches.append(tf.pad(inputs, [[0, 8 - len(films)], [0, 0], [0, 0], [0, 0]]))
    print(f"images: {len(files)} ({segmenter.input_size} px segmenter {segmenter.description}); best of "
          f"{args.repeats}, alternating; load average {os.getloadavg()[0]:.1f}")
    for flip_tta in (False, True):
        segmenter.flip_tta = flip_tta
        masks = tf.function(lambda p: lung_masks(p, segmenter.lung_classes), jit_compile=True)
        quality = tf.function(lambda p, f, t=flip_tta: segment_quality(p, f, segmenter.lung_classes, t),
                              jit_compile=True)

        def masks_only(masks=masks):
            for batch in batches:
                masks(segmenter.probabilities(batch)).numpy()

        def with_quality(quality=quality):
            for batch in batches:
                quality(*segmenter.outputs(batch))["masks"].numpy()

        times = {masks_only: [], with_quality: []}
        for stage in times:
            stage()                                               # warm-up: tracing and XLA compilation
        for _ in range(args.repeats):
            for stage in times:
                started = time.perf_counter()
                stage()
                times[stage].append(time.perf_counter() - started)
        before, after = min(times[masks_only]), min(times[with_quality])
        extra = (after - before) / len(files) * 1e3
        print(f"flip_tta={flip_tta!s:5}: masks only {len(files) / before:6.1f} img/s, with quality "
              f"{len(files) / after:6.1f} img/s: x{after / before:.2f} the time, {extra:+.0f} ms per image")
    segmenter.flip_tta = False
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for path in files:
            (tmp / "data" / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, tmp / "data" / path.parent.name / path.name)
        prepare_manifest(tmp / "work", folders=[tmp / "data"], folds=2, test_size=0.5, progress=False)
        build_cache(tmp / "work", segmenter, CacheSettings(shard_size=64), progress=False)   # warm-up
        best = []
        for _ in range(args.repeats):
            shutil.rmtree(tmp / "work" / "cache")
            started = time.perf_counter()
            build_cache(tmp / "work", segmenter, CacheSettings(shard_size=64), progress=False)
            best.append(time.perf_counter() - started)
    print(f"whole segment (flip_tta=False, with quality): {len(files) / min(best):6.1f} img/s, "
          f"{min(best) / len(files) * 1e3:.0f} ms per image")


if __name__ == "__main__":
    main()
