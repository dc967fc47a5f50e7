"""Where one training (or inference) step's time goes: tfflannel (TensorFlow's profiler) vs torchvision (torch's).

For each backbone, one AdamW + cross-entropy step (`--mode infer`: one eval-mode batched forward) on the fixed
batch of `tools/bench_vs_torch.py` (same models, same threads, same recipe) is profiled in each framework after
two warm-up steps. The time of every op is put
into one of a few categories (convolution forward / backward, batch norm forward / backward, concatenation,
activation, pooling, optimizer update, other) by its type and name scope, so the two frameworks' profiles can be
set side by side; the op types that cost most in each framework are listed under the table. Prints; asserts
nothing. Measure on an idle machine.

    python tools/profile_step.py --torch-python /path/to/venv-with-torch/bin/python [--backbones densenet161]
        [--mode train|infer] [--batch-norm fused|keras] [--jit-compile]

TensorFlow: `tf.profiler.experimental` writes an XSpace trace; the ops' wall times are read from its
`tf_Compute` lines (one per inter-op thread: two ops that overlap are both counted in full, so the sum can
exceed the step's wall time). torch: `torch.profiler` on the CPU, each op's self time; the optimizer update is
the `optimizer` record_function region of `bench_vs_torch.build_torch_steps`.
"""

import argparse
import collections
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vs_torch import add_common_options, build_tensorflow_steps, build_torch_steps, parse_common_args  # noqa: E402

CATEGORIES = ("conv forward", "conv backward", "batch norm forward", "batch norm backward", "concat", "activation",
              "pooling", "dense", "optimizer", "other")


def tensorflow_category(name, op_type):
    """The category of one TensorFlow op, from its type and its name scope.

    Args:
        name: str. The op's full name, e.g. `gradient_tape/model/block1_bn1_1/batchnorm/mul_1/Mul`.
        op_type: str. The kernel, e.g. `_MklNativeConv2DBackpropFilter`.

    Returns:
        str. One of `CATEGORIES`.
    """
    backward = name.startswith("gradient_tape/")
    if "Conv2DBackprop" in op_type or "Conv2dNativeBackprop" in op_type:
        return "conv backward"
    if "Conv2D" in op_type or "DepthwiseConv" in op_type:
        return "conv forward"
    if name.startswith("adam_w/") or "/adam_w/" in name:
        return "optimizer"
    if "FusedBatchNorm" in op_type or "/moments/" in name or "/batchnorm/" in name or "/fused_batch_norm" in name:
        return "batch norm backward" if backward or "Grad" in op_type else "batch norm forward"
    if op_type == "ConcatV2" or "_concat" in name:
        return "concat"
    if op_type.startswith(("Relu", "Elu", "Sigmoid", "Tanh")):
        return "activation"
    if "Pool" in op_type:
        return "pooling"
    if "MatMul" in op_type:
        return "dense"
    return "other"


def torch_category(name, in_optimizer):
    """The category of one torch op, from its name and whether it ran inside the optimizer update.

    Args:
        name: str. The aten op, e.g. `aten::convolution_backward`.
        in_optimizer: bool. Whether the op ran inside the `optimizer` record_function region.

    Returns:
        str. One of `CATEGORIES`.
    """
    if in_optimizer:
        return "optimizer"
    if "convolution_backward" in name:
        return "conv backward"
    if "conv" in name:
        return "conv forward"
    if "batch_norm" in name:
        return "batch norm backward" if "backward" in name else "batch norm forward"
    if name in ("aten::cat", "aten::_cat", "aten::narrow", "aten::slice"):
        return "concat"
    if "relu" in name or "threshold" in name:
        return "activation"
    if "pool" in name:
        return "pooling"
    if name in ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul"):
        return "dense"
    return "other"


def profile_tensorflow(name, batch, threads, batch_norm, jit_compile, mode="train"):
    """Profile one tfflannel training or inference step (after two warm-up steps) with TensorFlow's profiler.

    Args:
        name: str. A key of `BACKBONES`.
        batch: int. Batch size.
        threads: int. TensorFlow intra- and inter-op threads.
        batch_norm: str. `fused` (`BatchNormalization`'s default) or `keras` (`fused=False`: Keras's ops).
        jit_compile: bool. Compile the train step with XLA.
        mode: str. `train` or `infer`. Defaults to `"train"`.

    Returns:
        dict: `step_ms` (the profiled step's wall time), `categories` (ms per category) and `ops` (ms per op type).
    """
    steps = build_tensorflow_steps(name, batch, "split", threads, batch_norm=batch_norm, jit_compile=jit_compile)
    return profile_tensorflow_step(steps[0] if mode == "train" else steps[1])


def profile_tensorflow_step(step):
    """Profile one call of `step` (after two warm-up calls) with TensorFlow's profiler.

    Args:
        step: callable. One training or inference step of a Keras model on the TensorFlow backend.

    Returns:
        dict: `step_ms`, `categories` and `ops`, as `profile_tensorflow`.
    """
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    step()
    step()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        started = time.perf_counter()
        step()
        step_ms = (time.perf_counter() - started) * 1e3
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(sorted(glob.glob(f"{logdir}/plugins/profile/*/*.xplane.pb"))[-1]).read_bytes())
    categories, ops = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                metadata = plane.event_metadata[event.metadata_id]
                if not metadata.display_name:                      # executor and thread-pool bookkeeping
                    continue
                milliseconds = event.duration_ps / 1e9
                categories[tensorflow_category(metadata.name.rsplit(":", 1)[0], metadata.display_name)] += milliseconds
                ops[metadata.display_name] += milliseconds
    return {"step_ms": step_ms, "categories": dict(categories), "ops": dict(ops)}


def profile_torch(name, batch, threads, mode="train"):
    """Profile one torchvision training or inference step (after two warm-up steps) with torch's profiler.

    Op times are self CPU times.

    Runs in the `--torch-worker` subprocess.

    Args:
        name: str. A key of `BACKBONES`.
        batch: int. Batch size.
        threads: int. torch intra-op threads.
        mode: str. `train` or `infer`. Defaults to `"train"`.

    Returns:
        dict: like `profile_tensorflow`'s, plus the torch `version`.
    """
    import torch

    steps = build_torch_steps(name, batch, threads)
    step = steps[0] if mode == "train" else steps[1]
    step()
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        started = time.perf_counter()
        step()
        step_ms = (time.perf_counter() - started) * 1e3
    categories, ops = collections.Counter(), collections.Counter()
    for event in profile.events():
        if event.name == "optimizer" or not event.name.startswith("aten::"):
            continue
        parent, in_optimizer = event.cpu_parent, False
        while parent is not None and not in_optimizer:
            in_optimizer, parent = parent.name == "optimizer", parent.cpu_parent
        milliseconds = event.self_cpu_time_total / 1e3
        categories[torch_category(event.name, in_optimizer)] += milliseconds
        ops[event.name] += milliseconds
    return {"step_ms": step_ms, "categories": dict(categories), "ops": dict(ops), "version": torch.__version__}


def print_profiles(name, ours, theirs, top):
    """Print the per-category table of one backbone and each framework's `top` op types."""
    print(f"\n{name}: profiled step {ours['step_ms']:.0f} ms (tf) vs {theirs['step_ms']:.0f} ms (torch)")
    print(f"  {'category':22s} {'tf ms':>9s} {'torch ms':>9s} {'tf - torch':>11s}")
    for category in CATEGORIES:
        a, b = ours["categories"].get(category, 0.0), theirs["categories"].get(category, 0.0)
        print(f"  {category:22s} {a:9.0f} {b:9.0f} {a - b:11.0f}")
    a, b = sum(ours["categories"].values()), sum(theirs["categories"].values())
    print(f"  {'sum of ops':22s} {a:9.0f} {b:9.0f} {a - b:11.0f}")
    for label, profile in (("tf", ours), ("torch", theirs)):
        ranked = sorted(profile["ops"].items(), key=lambda item: -item[1])[:top]
        print(f"  top {label}: " + ", ".join(f"{op} {ms:.0f}" for op, ms in ranked))


def main():
    """Parse the command line, then profile each backbone in both frameworks (or act as the torch worker)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser)
    parser.add_argument("--mode", default="train", choices=("train", "infer"),
                        help="Profile a training step or an eval-mode batched forward  [default: train].")
    parser.add_argument("--top", type=int, default=8, help="Op types listed per framework.")
    args = parse_common_args(parser)
    if args.torch_worker:
        print(json.dumps(profile_torch(args.torch_worker, args.batch, args.threads, args.mode)))
        return
    load = os.getloadavg()[0]
    print(f"threads {args.threads} for both; batch {args.batch}; batch norm {args.batch_norm}; "
          f"XLA {args.jit_compile}; load average {load:.1f}; ms in one {args.mode} step")
    if load > 0.5:
        print(f"warning: load average {load:.1f}: the machine is busy; profile on an idle machine", file=sys.stderr)
    for name in args.backbones:
        ours = profile_tensorflow(name, args.batch, args.threads, args.batch_norm, args.jit_compile, args.mode)
        output = subprocess.run([args.torch_python, __file__, "--torch-worker", name, "--batch", str(args.batch),
                                 "--threads", str(args.threads), "--mode", args.mode],
                                check=True, capture_output=True, text=True).stdout
        theirs = json.loads(output.strip().splitlines()[-1])
        print_profiles(name, ours, theirs, args.top)
        sys.stdout.flush()
    print(f"\ntorch {theirs['version']}; load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
