"""Shared fixtures: the bundled sample, optional ../shared data, a private KERAS_HOME."""

import os
import tempfile
from pathlib import Path

import pytest

# Never touch the user's ~/.keras and never download: set before Keras is imported.
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="tfflannel-keras-home-"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TFFLANNEL_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def sample_cls_dir():
    from tfflannel.sample import CLS_DIR

    return CLS_DIR


@pytest.fixture(scope="session")
def sample_seg_dir():
    from tfflannel.sample import SEG_DIR

    return SEG_DIR


@pytest.fixture(scope="session")
def shared_dir():
    """The project's shared data beside the checkout; tests that need it skip without it."""
    if not (SHARED / "data" / "cxr-cls" / "labels.csv").is_file():
        pytest.skip(f"needs the project's shared data at {SHARED} (absent on a fresh clone; set TFFLANNEL_SHARED)")
    return SHARED


@pytest.fixture(scope="session")
def sample_workdir(tmp_path_factory, sample_cls_dir):
    """prepare-data + segment (shipped lung segmenter) on the bundled sample, built once per session."""
    from tfflannel.data.manifest import prepare_manifest
    from tfflannel.segmentation.cache import CacheSettings, build_cache
    from tfflannel.segmentation.inference import load_segmenter

    workdir = tmp_path_factory.mktemp("sample-work")
    prepare_manifest(workdir, folders=[sample_cls_dir], progress=False)
    build_cache(workdir, load_segmenter(), CacheSettings(shard_size=16), progress=False)
    return workdir
