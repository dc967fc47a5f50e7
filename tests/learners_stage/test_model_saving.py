"""A run's model.keras loads in plain Python (a fresh interpreter) after `import tfflannel.models.saving`."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
import keras
import numpy as np
classifier_path, ensemble_path, out = sys.argv[1:4]
try:
    keras.saving.load_model(classifier_path, compile=False)
    print("loaded without the import")
except Exception as error:              # what a user sees without the import
    print("refused:", type(error).__name__, "GrayToImageNet" in str(error))
import tfflannel.models.saving  # noqa: F401  (what docs/serving.md tells users to import)
classifier = keras.saving.load_model(classifier_path, compile=False)
ensemble = keras.saving.load_model(ensemble_path, compile=False)
data = np.load(out + ".in.npz")
np.savez(out, classifier=classifier.predict(data["patches"], verbose=0),
         ensemble=ensemble.predict(data["scores"], verbose=0))
print("ok")
"""


def test_model_keras_loads_outside_the_cli_after_importing_the_saving_module(tmp_path):
    import keras

    from tfflannel.models.classifier import build_classifier
    from tfflannel.models.ensemble import build_ensemble

    keras.utils.set_random_seed(0)
    classifier = build_classifier("mobilenet_v2", 32)
    ensemble = build_ensemble("genet", num_learners=2)
    classifier.save(tmp_path / "classifier.keras")
    ensemble.save(tmp_path / "ensemble.keras")
    rng = np.random.default_rng(0)
    patches = rng.uniform(0, 255, (3, 32, 32, 1)).astype("float32")
    scores = rng.dirichlet(np.ones(4), (3, 2)).reshape(3, 8).astype("float32")   # (B, L*C)
    np.savez(tmp_path / "out.in.npz", patches=patches, scores=scores)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "classifier.keras"),
                             str(tmp_path / "ensemble.keras"), str(tmp_path / "out")], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == ["refused: TypeError True", "ok"], result.stdout
    loaded = np.load(tmp_path / "out.npz")
    np.testing.assert_allclose(loaded["classifier"], classifier.predict(patches, verbose=0), atol=1e-6)
    np.testing.assert_allclose(loaded["ensemble"], ensemble.predict(scores, verbose=0), atol=1e-6)
