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


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """The whole course run once in the quick profile (real BUSI when BUSI_ROOT is set, else
    synthetic). Returns the run folder and, per notebook, the papermill error or None."""
    from busi_utils.course import course_notebooks, run_course

    run_dir = tmp_path_factory.mktemp("run_quick")
    errors: dict[str, BaseException | None] = {}
    for nb in course_notebooks():
        try:
            run_course("quick", str(run_dir), only=[nb.name[:2]])
            errors[nb.name] = None
        except Exception as err:  # papermill's error names the failing cell
            errors[nb.name] = err
            break
    return run_dir, errors


@pytest.fixture(scope="session")
def quick_paths(quick_run):
    """The quick run's folder, once notebooks 01-05 have succeeded (else the test is skipped
    as an error of the notebook test, which reports the real failure)."""
    from busi_utils.runfolder import RunPaths

    run_dir, errors = quick_run
    needed = [n for n in errors if n[:2] in ("01", "02", "03", "04", "05")]
    if len(needed) < 5 or any(errors[n] for n in needed):
        pytest.fail("the quick course run failed; see test_notebooks for the failing cell")
    return RunPaths.for_profile("quick", run_dir)


@pytest.fixture(scope="session")
def quick_test_image(quick_paths) -> Path:
    """The first test-split image of the quick run (a scan no model trained on)."""
    split = quick_paths.read_split()
    index = data.read_index(quick_paths.index_csv).set_index("image_id")
    return Path(index.loc[split.query("split == 'test'")["image_id"].iloc[0], "image_path"])
