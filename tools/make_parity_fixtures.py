"""Write tests/fixtures/parity/NAME.npz: torchvision logits of seeded weights on a fixed input (needs torch).

For each torchvision-layout backbone, builds the torchvision model, fills every parameter and BN
statistic from `tfflannel.models.state_dicts.seeded_state_dict` (NumPy, seeded per tensor name),
runs one fixed input in eval mode and stores the input (uint8, scaled to [-1, 1] on both sides), the
logits and the state dict's (name, shape) list. No weights are stored: the test regenerates them
from the seed with NumPy and imports them through `import-weights`. Run once, in a venv with torch
and torchvision (never a CI dependency):

    /work/issue10-venv/bin/python tools/make_parity_fixtures.py            # all five
    /work/issue10-venv/bin/python tools/make_parity_fixtures.py --only vgg19_bn
"""

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tfflannel.models.state_dicts import seeded_state_dict  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "parity"
SEED = 0
# torchvision constructor, input side (small where the architecture allows: VGG's reference head needs 224,
# Inception's auxiliary head about 299).
MODELS = {
    "densenet161": ("densenet161", {}, 72),
    "resnext101_32x8d": ("resnext101_32x8d", {}, 64),
    "resnet152_tv": ("resnet152", {}, 80),
    "vgg19_bn": ("vgg19_bn", {}, 224),
    "inception_v3_tv": ("inception_v3", {"aux_logits": True, "init_weights": False, "transform_input": False}, 299),
}


def fixture_input(size, seed=SEED):
    """The fixed (1, size, size, 3) uint8 input; both frameworks see x / 127.5 - 1 in float32."""
    return np.random.default_rng([seed, size]).integers(0, 256, (1, size, size, 3), dtype=np.uint8)


def scaled(image):
    """Return a uint8 image scaled to [-1, 1] as float32 (`x / 127.5 - 1`), as tfflannel's `tf` pre-processing."""
    return image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def make_fixture(name):
    """Write `tests/fixtures/parity/NAME.npz` for one backbone (needs torch and torchvision).

    The npz holds `image` (the uint8 input), `logits` (float32, eval mode), the state dict's `names`, its
    shapes flattened as `ndims` (rank per tensor) and `dims`, the `seed`, and the torch/torchvision versions
    and constructor name.

    Args:
        name: str. A key of `MODELS`.
    """
    import torch
    import torchvision

    constructor, kwargs, size = MODELS[name]
    model = getattr(torchvision.models, constructor)(weights=None, **kwargs).eval()
    reference = model.state_dict()
    names_shapes = [(key, tuple(value.shape)) for key, value in reference.items()]
    state = seeded_state_dict(names_shapes, SEED)
    model.load_state_dict({key: torch.from_numpy(value) for key, value in state.items()}, strict=True)
    image = fixture_input(size)
    with torch.no_grad():
        logits = model(torch.from_numpy(scaled(image).transpose(0, 3, 1, 2))).numpy()
    lengths = np.array([len(shape) for _, shape in names_shapes], np.int64)
    dims = np.array([d for _, shape in names_shapes for d in shape], np.int64)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / f"{name}.npz", image=image, logits=logits.astype(np.float32),
                        names=np.array([key for key, _ in names_shapes]), ndims=lengths, dims=dims,
                        seed=np.int64(SEED), torch_version=np.array(torch.__version__),
                        torchvision_version=np.array(torchvision.__version__), torchvision_name=np.array(constructor))
    print(f"{name}: {len(names_shapes)} tensors, input {size}, logits range [{logits.min():.3f}, {logits.max():.3f}] "
          f"-> {OUT / f'{name}.npz'}")


def main():
    """Parse `--only` and write the fixtures of those backbones (default: all five)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(MODELS), help="Backbones to write (default: all five).")
    args = parser.parse_args()
    for name in args.only or sorted(MODELS):
        make_fixture(name)


if __name__ == "__main__":
    main()
