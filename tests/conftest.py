"""Shared fixtures: a synthetic BUSI for unit tests, the real BUSI when BUSI_ROOT is set."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Keep every cache of the test session in one temporary place (never ~/.cache, never the dataset).
if "BUSI_CACHE" not in os.environ:
    import tempfile

    os.environ["BUSI_CACHE"] = tempfile.mkdtemp(prefix="busi-test-cache-")
os.environ.setdefault("BUSI_OFFLINE", "1")  # tests never download

from busi_utils import data, dedup  # noqa: E402
from busi_utils.synthetic import make_synthetic_busi  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    return make_synthetic_busi(tmp_path_factory.mktemp("synthetic"), seed=1)


@pytest.fixture
def synthetic_copy(synthetic_root, tmp_path) -> Path:
    """A private, writable copy for tests that damage the dataset."""
    dest = tmp_path / "Dataset_BUSI_with_GT"
    shutil.copytree(synthetic_root, dest)
    return dest


@pytest.fixture(scope="session")
def synthetic_index(synthetic_root):
    return data.build_index(synthetic_root, progress=False)


@pytest.fixture(scope="session")
def real_source():
    root = os.environ.get("BUSI_ROOT")
    if not root:
        pytest.skip("BUSI_ROOT is not set: the real-data checks need the BUSI folder or Kaggle zip")
    return data.resolve_data(root)


@pytest.fixture(scope="session")
def real_index(real_source):
    return data.build_index(real_source.root, progress=False)


@pytest.fixture(scope="session")
def real_groups(real_index):
    pairs = dedup.find_duplicate_pairs(real_index, progress=False)
    return dedup.group_duplicates(real_index, pairs)
