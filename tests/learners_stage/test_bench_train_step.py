"""tools/bench_train_step.py: the model half of the pipeline-or-model bottleneck check keeps working."""

import csv
import importlib.util
import math

import keras
import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train_step", REPO / "tools" / "bench_train_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_cli_measures_appends_a_csv_row_and_restores_the_precision_policy(bench, tmp_path, monkeypatch):
    out = tmp_path / "rates.csv"
    out.write_text(",".join(bench.CSV_FIELDS) + "\ntensorflow,cpu,earlier,32,2,float32,1.0,2.0\n")
    monkeypatch.setattr("sys.argv", ["bench_train_step.py", "--backbone", "mobilenet_v2", "--size", "32", "--batch",
                                     "2", "--steps", "1", "--warmup", "1", "--precision", "mixed_bfloat16",
                                     "--csv", str(out)])
    bench.main()
    rows = list(csv.DictReader(out.open()))
    assert [row["backbone"] for row in rows] == ["earlier", "mobilenet_v2"]
    assert rows[1]["backend"] == keras.backend.backend() and rows[1]["precision"] == "mixed_bfloat16"
    assert all(math.isfinite(float(rows[1][k])) and float(rows[1][k]) > 0
               for k in ("train_images_per_s", "infer_images_per_s"))
    assert keras.mixed_precision.global_policy().name == "float32"


def test_unknown_backbone_is_refused_with_the_registered_names(bench, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["bench_train_step.py", "--backbone", "densenet999"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "densenet999" in capsys.readouterr().err
