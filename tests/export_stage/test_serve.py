"""A served export: serving_default refuses a decompression bomb from its header without decoding it (peak memory of
a child process), and `tfflannel serve` (KServe) answers TF Serving's REST API as `predict --model` does and keeps
serving after hostile requests."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tfflannel.cli import main
from tfflannel.data.io import set_image_limits
from tfflannel.serving.serve_process import ServedModel, bomb_png, hostile_requests, instances_body

OUTPUTS = {"probabilities", "label", "learner_scores", "lung_fraction", "mask_ok", "mask_confidence",
           "flip_disagreement"}


@pytest.fixture(scope="module")
def global_export(tmp_path_factory):
    """One untrained global learner (no predict-base needed) exported with data.max_megapixels=50 (not the default)."""
    import keras

    from tfflannel.models.classifier import build_classifier

    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("served")
    run = root / "global_mobilenet_v2"
    run.mkdir()
    model = build_classifier("mobilenet_v2", 64)
    for weight in model.weights:          # untrained MobileNetV2 features vanish at 64 px; this makes scores vary
        if weight.path.endswith("moving_variance"):
            weight.assign(np.full(weight.shape, 0.1, "float32"))
    model.save(run / "model.keras")
    (run / "run.yaml").write_text(yaml.safe_dump({"kind": "global", "backbone": "mobilenet_v2", "fold": 1,
                                                  "workdir": str(root), "input_size": 64, "resize": 80}))
    result = CliRunner().invoke(main, ["export", "--runs", str(run), "--out", str(root / "model"),
                                       "--set", "data.max_megapixels=50"])
    set_image_limits()                    # the command set this process's reader limits from its config
    assert result.exit_code == 0, result.output
    return root / "model"


MEMORY_PROBE = r"""
import json, sys
import tensorflow as tf

def peak_mb():
    # VmHWM is this process's own peak; ru_maxrss would carry the (large) pytest parent's peak across exec.
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024

def refusal(batch):
    try:
        signature(images=tf.constant(batch))
    except tf.errors.InvalidArgumentError as error:
        return error.message
    return None

signature = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
film, bomb = (open(path, "rb").read() for path in sys.argv[2:4])
loaded = peak_mb()
decoded = tf.io.decode_png(bomb, channels=1)          # the oracle, first: a decode this probe would see
decoded_peak, shape = peak_mb(), decoded.shape.as_list()
del decoded
first = signature(images=tf.constant([film]))["probabilities"].numpy().tolist()
before = peak_mb()
bomb_refusal = refusal([film, bomb])
after = peak_mb()
again = signature(images=tf.constant([film]))["probabilities"].numpy().tolist()
truncated, text = refusal([film[: len(film) // 2]]), refusal([b"hello, not an image"])
print(json.dumps({"first": first, "again": again, "before": before, "after": after, "loaded": loaded,
                  "decoded": decoded_peak, "shape": shape, "bomb": bomb_refusal, "truncated": truncated,
                  "text": text}))
"""


def test_export_records_its_limits_and_refuses_a_bomb_without_decoding_it(global_export, sample_cls_dir, tmp_path):
    assert json.loads((global_export / "1" / "assets.extra" / "image_limits.json").read_text()) == \
        {"max_megapixels": 50.0, "min_side": 64}
    assert "50 megapixels (data.max_megapixels)" in (global_export / "1" / "assets.extra" / "README.txt").read_text()
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(20000))
    assert bomb.stat().st_size < 500_000
    film = sorted(sample_cls_dir.glob("covid19/*.png"))[0]
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(global_export / "1"), str(film), str(bomb)],
                           capture_output=True, text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr[-3000:]
    seen = json.loads(probe.stdout.splitlines()[-1])
    assert "instance 1: 20000x20000 pixels (400 megapixels) exceeds the limit of 50 megapixels" in seen["bomb"]
    assert seen["after"] - seen["before"] < 50, "refused from the header: peak memory did not grow (MB)"
    assert seen["shape"] == [20000, 20000, 1] and seen["decoded"] - seen["loaded"] > 200, \
        "decoding it takes most of its 400 MB (some reused), and the probe sees that"
    assert seen["again"] == seen["first"], "a good film in the next request is unaffected"
    assert "Invalid PNG data" in seen["truncated"]
    assert "instance 0: not a PNG or JPEG image" in seen["text"]


@pytest.mark.skipif(importlib.util.find_spec("kserve") is None,
                    reason="needs the serve extra (KServe): pip install -e '.[serve]'")
def test_serve_answers_tf_serving_rest_like_predict_model_and_survives_hostile_requests(global_export, sample_cls_dir,
                                                                                        tmp_path):
    films = sorted(sample_cls_dir.glob("*/*.png"))[::13]
    local = CliRunner().invoke(main, ["predict", *map(str, films), "--model", str(global_export)])
    assert local.exit_code == 0, local.output
    expected = json.loads(local.stdout)
    with ServedModel(global_export, options=["--max-body-mb", "1"], log=tmp_path / "serve.log") as server:
        assert server.request("GET", "/v1/models/tfflannel") == (200, {"name": "tfflannel", "ready": True})
        status, answer = server.request("GET", "/v1/models/other")
        assert status == 404 and "other" in answer["error"]
        status, answer, _ = server.predict(instances_body([film.read_bytes() for film in films]))
        assert status == 200, answer
        rows = answer["predictions"]
        assert len(rows) == len(films) and all(set(row) == OUTPUTS for row in rows)
        spread = np.std([row["probabilities"] for row in rows], axis=0).max()
        assert spread > 1e-3, "the films get different probabilities (a comparison that could fail)"
        for row, record in zip(rows, expected, strict=True):
            np.testing.assert_allclose(row["probabilities"], list(record["probabilities"].values()), atol=1e-5)
            assert row["label"] == record["label"] and row["mask_ok"] == record["mask_ok"]
            for name in ("lung_fraction", "mask_confidence", "flip_disagreement"):     # predict rounds to 4 places
                assert row[name] == pytest.approx(record[name], abs=6e-5)
            assert len(row["learner_scores"]) == 1 and len(row["learner_scores"][0]) == 4

        good = instances_body([films[0].read_bytes()])
        status, baseline, _ = server.predict(good)
        assert status == 200
        np.testing.assert_allclose(baseline["predictions"][0]["probabilities"], rows[0]["probabilities"], atol=1e-6)
        curl = server.request("POST", "/v1/models/tfflannel:predict", good,     # README's curl -d: a form type
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert curl == (200, baseline)
        for name, body, expected_status, word in hostile_requests(films[0].read_bytes(), 1_000_000):
            status, answer = server.request("POST", "/v1/models/tfflannel:predict", body)
            assert status == expected_status and word.lower() in answer["error"].lower(), (name, status, answer)
            assert server.predict(good)[:2] == (200, baseline), f"after {name}"
        try:            # streamed over the limit with no Content-Length: 413, or the connection is closed on it
            status, answer = server.request("POST", "/v1/models/tfflannel:predict", (b" " * 100_000 for _ in range(30)))
            assert status == 413, answer
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert server.predict(good)[:2] == (200, baseline), "after a streamed body over the limit"
        assert server.process.poll() is None
    assert server.process.returncode is not None
