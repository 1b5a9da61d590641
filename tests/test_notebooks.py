"""Every course notebook, executed by papermill in the quick profile, then checked by nbval.

The run uses the real BUSI when BUSI_ROOT is set, else the synthetic stand-in. Papermill's
run proves that every cell runs. A notebook with cells marked ``# NBVAL_CHECK_OUTPUT`` is then
re-executed by nbval (its injected parameters included), and those cells must print the same
again: that proves the notebook resumes from the run folder and reproduces its numbers. The
others are not re-executed (it cost minutes and checked nothing more): the resume of chapter 4
is proven by ``test_course``, and chapter 5's cached experiment by ``test_runfolder``.
"""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest

from busi_utils.course import course_notebooks

NOTEBOOKS = [p.name for p in course_notebooks()]


def has_checked_cells(path) -> bool:
    nb = nbformat.read(path, as_version=4)
    return any("# NBVAL_CHECK_OUTPUT" in c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_and_passes_nbval(quick_run, name):
    errors = quick_run.upto(name[:2])
    if name not in errors:
        pytest.fail(f"{name} did not run: an earlier notebook failed")
    if errors[name] is not None:
        raise errors[name]
    executed = quick_run.run_dir / "notebooks" / name
    if not has_checked_cells(executed):
        return
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--nbval-lax",
            "--nbval-current-env",
            str(executed),
        ],
        capture_output=True,
        text=True,
        cwd=executed.parent,
    )
    assert result.returncode == 0, result.stdout[-4000:]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_reads_like_a_chapter(name):
    """Prose in markdown cells (not '#'-prefixed lines, which render as a heading each), a title
    first, and exactly one cell tagged ``parameters`` for papermill."""
    nb = nbformat.read(next(p for p in course_notebooks() if p.name == name), as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), "the first cell is the chapter title"
    for k, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        lines = [line for line in cell.source.splitlines() if line.strip()]
        headings = [line for line in lines if line.startswith("#")]
        assert len(headings) <= 1, f"markdown cell {k} has {len(headings)} heading lines: {headings[:3]}"
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0].cell_type == "code"
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "outputs are build artefacts: keep them out of git"
    )
