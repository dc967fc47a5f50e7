"""Public framework APIs only on the single-host path: private Keras/TensorFlow code is quarantined and gated."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUARANTINED = "tfflannel.learners.keras_multi_worker_patch"    # the one module that patches Keras' private trainer
# Imports of private framework modules and uses of private framework attributes, as they appear in source.
PRIVATE = re.compile(r"keras\.src|tensorflow\.python|\._flatten_layers|(?<!\w)_seed_generators|(?<!\w)_keras_history"
                     r"|_in_multi_worker_mode|_maybe_symbolic_build|(?<!\w)reduce_per_replica")


def _module_name(path):
    return ".".join(path.relative_to(REPO).with_suffix("").parts)


def test_private_framework_apis_live_only_in_the_quarantined_module():
    users = {_module_name(path) for path in (REPO / "tfflannel").rglob("*.py")
             if PRIVATE.search("\n".join(line for line in path.read_text().splitlines()
                                         if not line.lstrip().startswith("#")))}
    assert users == {QUARANTINED}, f"private framework APIs used outside {QUARANTINED}: {sorted(users - {QUARANTINED})}"


SCRIPT = textwrap.dedent("""
    import json, sys
    from tfflannel.cli import main
    main.main(args=sys.argv[1:], prog_name="tfflannel", standalone_mode=False)
    print("MODULES", json.dumps(sorted(m for m in sys.modules if m.startswith("tfflannel"))))
""")


def test_single_host_train_patch_never_imports_the_quarantined_module(tmp_path, sample_workdir):
    """A whole single-host train-patch (in a fresh process) imports no tfflannel module touching private APIs.

    The tiny `test_cnn` backbone: which modules load depends on the strategy, not on the backbone (the backbones
    package registers them all)."""
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, "train-patch", "--backbone", "test_cnn", "--fold", "1", "--data",
         str(sample_workdir), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8", "--weights", "none",
         "--set", "patched.patch_size=32", "--set", "patched.val_patches=1", "--set", "patched.patches_per_image=1",
         "--set", "patched.augment=false", "--set", "runtime.strategy=default"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "run" / "model.keras").is_file()
    modules = json.loads(next(line for line in result.stdout.splitlines() if line.startswith("MODULES"))[8:])
    assert "tfflannel.learners.train" in modules                   # the oracle sees the training modules
    assert QUARANTINED not in modules
    assert "tfflannel.reproduce" not in modules
