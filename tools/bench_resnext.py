"""Forward + backward time of ResNeXt's grouped 3x3 convolution: one `groups=32` Conv2D versus 32 split convs.

Both implementations of `GroupedConv2D` hold the same kernel and give the same outputs
(tests/learners_stage); this measures which is faster on the machine at hand, to choose the config
value `grouped_conv` (split on CPU, grouped on GPU). Prints the times and the ratio; asserts nothing.

    python tools/bench_resnext.py [--size 28] [--width 512] [--batch 8] [--repeats 5]
"""

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tfflannel.models.backbones.resnext import GroupedConv2D  # noqa: E402


def timed_step(impl, size, width, batch, repeats):
    """Time a forward + backward pass of one 3x3 grouped convolution (32 groups) built as `impl`.

    Args:
        impl: str. `apply_grouped_conv` implementation: `"grouped"` (one `Conv2D(groups=32)`)
            or `"split"` (32 `Conv2D` + concatenate).
        size: int. Input height and width.
        width: int. Input and output channels.
        batch: int. Batch size.
        repeats: int. Timed calls, after one untimed warm-up (tracing) call.

    Returns:
        float. Mean seconds per call of the `tf.function` step.
    """
    inputs = keras.Input((size, size, width))
    padded = keras.layers.ZeroPadding2D(1)(inputs)
    model = keras.Model(inputs, GroupedConv2D(width, 3, 32, 1, impl, name=impl)(padded))
    x = tf.constant(np.random.default_rng(0).random((batch, size, size, width), dtype=np.float32))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def main():
    """Parse the options, time both grouped-convolution implementations and print them with their ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--width", type=int, default=512, help="channels (stage-2 width of ResNeXt101 32x8d)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    devices = [d.device_type for d in tf.config.list_physical_devices()]
    grouped = timed_step("grouped", args.size, args.width, args.batch, args.repeats)
    split = timed_step("split", args.size, args.width, args.batch, args.repeats)
    print(f"devices {devices}; input {args.batch}x{args.size}x{args.size}x{args.width}, 32 groups")
    print(f"grouped Conv2D(groups=32): {grouped * 1000:9.1f} ms per forward+backward")
    print(f"32 split Conv2D + concat : {split * 1000:9.1f} ms per forward+backward")
    print(f"ratio grouped / split    : {grouped / split:9.2f}")


if __name__ == "__main__":
    main()
