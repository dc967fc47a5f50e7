"""Training and inference images/s of the five torchvision-layout learners: tfflannel (TensorFlow) vs torchvision.

Both frameworks run on the same CPU in the same run, one backbone at a time, side by side: the
TensorFlow measurement in this process, then the torchvision one in a subprocess of a Python that has
torch + torchvision (`--torch-python`, never a tfflannel dependency). Same recipe on both sides: a
4-class head (torchvision's last Linear replaced, as the paper did; tfflannel `head: reference`),
AdamW, cross-entropy, a fixed in-memory batch, eval-mode batched inference. Prints images/s and the
ratio tfflannel / torchvision per backbone; asserts nothing.

Fair by construction: both frameworks get the same number of compute threads (all cores by default,
`--threads N` for both), the two are alternated (tf, torch, torch, tf, ...) over `--repeats` rounds
(at least 3) so that a drift in the machine's load hits both, and the median and the spread (min-max)
of each rate and of the per-round ratio are printed. A warning is printed when the load average says
the machine is busy: measure on an idle machine for figures you report.

    python tools/bench_vs_torch.py --torch-python /path/to/venv-with-torch/bin/python [--batch 8] [--steps 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

# tfflannel name -> (torchvision constructor, kwargs, input side)
BACKBONES = {
    "densenet161": ("densenet161", {}, 224),
    "inception_v3_tv": ("inception_v3", {"aux_logits": False, "init_weights": False}, 299),
    "resnet152_tv": ("resnet152", {}, 224),
    "resnext101_32x8d": ("resnext101_32x8d", {}, 224),
    "vgg19_bn": ("vgg19_bn", {}, 224),
}


def fixed_batch(batch, size, channels):
    """Return a fixed random batch (seed 0) that both frameworks train and infer on.

    Args:
        batch: int. Images in the batch.
        size: int. Image side in pixels.
        channels: int. 1 for tfflannel (grey input), 3 for torchvision.

    Returns:
        tuple: `(images, labels)`, float32 (batch, size, size, channels) values in [0, 255) and int64 (batch,)
        labels in 0-3.
    """
    rng = np.random.default_rng(0)
    return (rng.random((batch, size, size, channels), dtype=np.float32) * 255,
            rng.integers(0, 4, batch).astype(np.int64))


def time_calls(call, steps):
    """Return the mean seconds per call of `call()` over `steps` calls, after one untimed warm-up call."""
    call()                                                       # warm-up: tracing, allocation
    started = time.perf_counter()
    for _ in range(steps):
        call()
    return (time.perf_counter() - started) / steps


def build_tensorflow_steps(name, batch, grouped_conv, threads, batch_norm="fused", jit_compile=False):
    """Build a tfflannel classifier (`head="reference"`, random init) and return its timed train and infer calls.

    Args:
        name: str. A key of `BACKBONES`.
        batch: int. Batch size.
        grouped_conv: str. `split` or `grouped` (ResNeXt's grouped convolutions).
        threads: int. TensorFlow intra- and inter-op threads.
        batch_norm: str. `fused` (`BatchNormalization`'s default: TensorFlow's fused kernels) or `keras`
            (Keras's separate ops, `BatchNormalization(fused=False)`). Defaults to `"fused"`.
        jit_compile: bool. Compile the train step with XLA. Defaults to `False`.

    Returns:
        tuple: `(train_step, infer_step)`, callables that run one AdamW step / one batched inference.
    """
    import keras
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() != threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)

    from tfflannel.models.batch_norm import BatchNormalization
    from tfflannel.models.classifier import build_classifier
    from tfflannel.models.precise_bn import model_layers

    size = BACKBONES[name][2]
    keras.utils.set_random_seed(0)
    keras.backend.clear_session()
    model = build_classifier(name, size, head="reference", grouped_conv=grouped_conv)
    for layer in model_layers(model):
        if isinstance(layer, BatchNormalization):
            layer.fused = batch_norm == "fused"
    model.compile(optimizer=keras.optimizers.AdamW(1e-5, weight_decay=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(), jit_compile=jit_compile)
    x, y = fixed_batch(batch, size, 1)
    return (lambda: model.train_on_batch(x, y)), (lambda: model.predict_on_batch(x))


def build_torch_steps(name, batch, threads):
    """Build the torchvision model with a 4-class last Linear and return its train and infer calls.

    Runs in a subprocess of a Python with torch and torchvision (never a tfflannel dependency).

    Args:
        name: str. A key of `BACKBONES`.
        batch: int. Batch size.
        threads: int. torch intra-op threads.

    Returns:
        tuple: `(train_step, infer_step)`, callables that run one AdamW step (its optimizer update inside a
        `torch.profiler.record_function("optimizer")` region) / one eval-mode batched inference.
    """
    import torch
    import torchvision

    torch.set_num_threads(threads)

    constructor, kwargs, size = BACKBONES[name]
    torch.manual_seed(0)
    model = getattr(torchvision.models, constructor)(weights=None, **kwargs)
    if hasattr(model, "fc"):
        model.fc = torch.nn.Linear(model.fc.in_features, 4)
    elif isinstance(model.classifier, torch.nn.Sequential):
        model.classifier[-1] = torch.nn.Linear(model.classifier[-1].in_features, 4)
    else:
        model.classifier = torch.nn.Linear(model.classifier.in_features, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    images, labels = fixed_batch(batch, size, 3)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2) / 255.0).float()
    y = torch.from_numpy(labels)

    def train_step():
        model.train()
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        with torch.profiler.record_function("optimizer"):
            optimizer.step()

    def infer_step():
        model.eval()
        with torch.no_grad():
            model(x)

    return train_step, infer_step


def measure_torch(name, batch, steps, threads):
    """Measure the torchvision model: images/s of AdamW train steps and of eval-mode inference.

    Runs in the `--torch-worker` subprocess (needs torch and torchvision).

    Args:
        name: str. A key of `BACKBONES`.
        batch: int. Batch size.
        steps: int. Timed steps after one warm-up step.
        threads: int. torch intra-op threads.

    Returns:
        dict: `train` and `infer` images per second, the torch `threads` used and the torch `version`.
    """
    import torch

    train_step, infer_step = build_torch_steps(name, batch, threads)
    return {"train": batch / time_calls(train_step, steps), "infer": batch / time_calls(infer_step, steps),
            "threads": torch.get_num_threads(), "version": torch.__version__}


def time_tensorflow(train_step, infer_step, batch, steps):
    """One tfflannel round: images/s of `train_step` and `infer_step` (from `build_tensorflow_steps`)."""
    return {"train": batch / time_calls(train_step, steps), "infer": batch / time_calls(infer_step, steps)}


def time_torch(args, name):
    """One torchvision round, in a fresh `--torch-worker` subprocess of `args.torch_python`."""
    output = subprocess.run([args.torch_python, __file__, "--torch-worker", name, "--batch", str(args.batch),
                             "--steps", str(args.steps), "--threads", str(args.threads)],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def summarize(values):
    """`median [min, max]` of a list of rates or ratios, for the table."""
    return f"{statistics.median(values):7.2f} [{min(values):.2f}, {max(values):.2f}]"


def add_common_options(parser):
    """Add the options this script and `tools/profile_step.py` share: frameworks, backbones, batch, threads, kernels.

    Args:
        parser: argparse.ArgumentParser.
    """
    parser.add_argument("--torch-python", help="A Python with torch + torchvision (runs the torchvision half).")
    parser.add_argument("--backbones", nargs="*", default=sorted(BACKBONES), choices=sorted(BACKBONES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="Compute threads for both frameworks  [default: all cores].")
    parser.add_argument("--batch-norm", default="fused", choices=("fused", "keras"),
                        help="tfflannel's batch norm: TensorFlow's fused kernels or Keras's ops  [default: fused].")
    parser.add_argument("--jit-compile", action="store_true", help="Compile tfflannel's train step with XLA.")
    parser.add_argument("--torch-worker", help=argparse.SUPPRESS)


def parse_common_args(parser):
    """Parse the command line; `--torch-python` is required unless this process is the torch worker."""
    args = parser.parse_args()
    if not args.torch_worker and not args.torch_python:
        parser.error("--torch-python PYTHON is required (a Python with torch + torchvision)")
    return args


def main():
    """Parse the command line, then print images/s and the ratio per backbone (or act as the torch worker)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(parser)
    parser.add_argument("--steps", type=int, default=2, help="Timed steps per round after one warm-up step.")
    parser.add_argument("--repeats", type=int, default=3, help="Rounds, frameworks alternated (at least 3).")
    parser.add_argument("--grouped-conv", default="split", choices=("split", "grouped"))
    args = parse_common_args(parser)
    if args.torch_worker:
        print(json.dumps(measure_torch(args.torch_worker, args.batch, args.steps, args.threads)))
        return
    if args.repeats < 3:
        parser.error(f"--repeats must be at least 3. Received: {args.repeats}.")
    load = os.getloadavg()[0]
    print(f"CPU cores visible: {os.cpu_count()}; threads {args.threads} for both; batch {args.batch}; "
          f"tfflannel batch norm {args.batch_norm}, XLA {args.jit_compile}, grouped_conv {args.grouped_conv}; "
          f"{args.steps} timed steps x {args.repeats} alternated rounds; load average {load:.1f}; "
          f"images/s (train = AdamW step, infer = eval forward), median [min, max]")
    if load > 0.5:
        print(f"warning: load average {load:.1f} before the run: the machine is busy, so the figures are not "
              "fit to report; measure on an idle machine", file=sys.stderr)
    print(f"{'backbone':18s} {'tf train':>22s} {'torch train':>22s} {'ratio':>22s} {'tf infer':>22s} "
          f"{'torch infer':>22s} {'ratio':>22s}")
    for name in args.backbones:
        train_step, infer_step = build_tensorflow_steps(name, args.batch, args.grouped_conv, args.threads,
                                                        args.batch_norm, args.jit_compile)
        train_step()
        infer_step()                                              # warm-ups: tracing, allocation
        rounds = []
        for index in range(args.repeats):                         # alternate: tf first, then torch first, ...
            if index % 2 == 0:
                ours = time_tensorflow(train_step, infer_step, args.batch, args.steps)
                rounds.append((ours, time_torch(args, name)))
            else:
                theirs = time_torch(args, name)
                rounds.append((time_tensorflow(train_step, infer_step, args.batch, args.steps), theirs))
        columns = []
        for kind in ("train", "infer"):
            tf_rates = [tf_round[kind] for tf_round, _ in rounds]
            torch_rates = [torch_round[kind] for _, torch_round in rounds]
            columns += [summarize(tf_rates), summarize(torch_rates),
                        summarize([a / b for a, b in zip(tf_rates, torch_rates, strict=True)])]
        print(f"{name:18s} " + " ".join(f"{c:>22s}" for c in columns), flush=True)
    print(f"torch {rounds[-1][1]['version']} ({rounds[-1][1]['threads']} threads); load average after: "
          f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
