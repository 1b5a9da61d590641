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

import busi_utils  # noqa: E402,F401  (reproducible mode: pins the CPU code paths before torch loads)
from busi_utils import data  # noqa: E402
from busi_utils.data import dedup
from busi_utils.data.synthetic import make_synthetic_busi  # noqa: E402

COURSE_FIXTURES = {"quick_run", "quick_paths", "complete_quick_paths", "quick_test_image", "predictor"}


def pytest_collection_modifyitems(config, items):
    """Mark ``course`` every test that waits for the quick course run, reads the real data or
    executes notebooks: ``make test-fast`` (``pytest -m "not course"``) leaves them out."""
    for item in items:
        if COURSE_FIXTURES & set(getattr(item, "fixturenames", ())) or any(
            item.get_closest_marker(m) for m in ("real_data", "notebooks")
        ):
            item.add_marker(pytest.mark.course)


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


CELL_TIMEOUT = 600  # seconds: a quick-profile cell that runs longer has hung (the longest takes ~1 min here)


class QuickRun:
    """The course in the quick profile (real BUSI when BUSI_ROOT is set, else synthetic), run
    notebook by notebook as far as the tests of this session need: ``upto("05")`` runs 01-05
    once, so a test of the Predictor does not wait for chapter 7. ``errors`` holds, per notebook
    run, papermill's error (it names the failing cell) or None; a failure stops the run there."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.errors: dict[str, BaseException | None] = {}

    def upto(self, prefix: str) -> dict[str, BaseException | None]:
        from busi_utils.course import course_notebooks, run_course

        for nb in course_notebooks():
            if nb.name[:2] > prefix:
                break
            if nb.name in self.errors:
                if self.errors[nb.name] is not None:
                    break
                continue
            try:
                run_course("quick", str(self.run_dir), only=[nb.name[:2]], cell_timeout=CELL_TIMEOUT)
                self.errors[nb.name] = None
            except Exception as err:
                self.errors[nb.name] = err
                break
        return self.errors


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory) -> QuickRun:
    return QuickRun(tmp_path_factory.mktemp("run_quick"))


@pytest.fixture(scope="session")
def quick_paths(quick_run):
    """The quick run's folder, once notebooks 01-05 have succeeded (else the test fails, and
    the notebook test reports the real failure)."""
    from busi_utils.core.runfolder import RunPaths

    errors = quick_run.upto("05")
    needed = [n for n in errors if n[:2] <= "05"]
    if len(needed) < 5 or any(errors[n] for n in needed):
        pytest.fail("the quick course run failed; see test_notebooks for the failing cell")
    return RunPaths.for_profile("quick", quick_run.run_dir)


@pytest.fixture(scope="session")
def complete_quick_paths(quick_paths, quick_run):
    """The quick run's folder once every notebook, chapter 7 included, has succeeded."""
    errors = quick_run.upto("99")
    if any(errors.values()) or len(errors) < len(_course_notebooks()):
        pytest.fail("the quick course run failed; see test_notebooks for the failing cell")
    return quick_paths


def _course_notebooks():
    from busi_utils.course import course_notebooks

    return course_notebooks()


@pytest.fixture(scope="session")
def quick_test_image(quick_paths) -> Path:
    """The first test-split image of the quick run (a scan no model trained on)."""
    split = quick_paths.read_split()
    index = data.read_index(quick_paths.index_csv).set_index("image_id")
    return Path(index.loc[split.query("split == 'test'")["image_id"].iloc[0], "image_path"])
