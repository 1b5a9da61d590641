"""Every course notebook, executed by papermill in the quick profile, then checked by nbval.

The run uses the real BUSI when BUSI_ROOT is set, else the synthetic stand-in. Papermill's
run proves that every cell runs. A notebook with cells marked ``# NBVAL_CHECK_OUTPUT`` is then
re-executed by nbval (its injected parameters included), and those cells must print the same
again: that proves the notebook resumes from the run folder and reproduces its numbers. The
others are not re-executed (it cost minutes and checked nothing more): the resume of chapter 4
is proven by ``test_course``, and chapter 5's cached experiment by ``test_runfolder``.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from busi_utils.core import config
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


WARNING = re.compile(r"\b\w*Warning\b|warnings\.warn\(")


def output_texts(nb) -> list[tuple[int, str, str]]:
    """(cell, kind, text) for every output of an executed notebook: streams by their name, rich
    outputs by their text forms (plain, markdown, HTML)."""
    found = []
    for k, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if "text" in out:
                found.append((k, out.get("name", "stream"), out["text"]))
            for kind, value in out.get("data", {}).items():
                if kind.startswith("text/"):
                    found.append((k, kind, value if isinstance(value, str) else "".join(value)))
    return found


def noise(nb, folders: list[str]) -> list[str]:
    """What an executed chapter should not print: a warning on stderr (the chapters teach none),
    or one of this machine's folders (the data, the cache, the run, the checkout, home)."""
    problems = []
    for k, kind, text in output_texts(nb):
        if kind == "stderr" and WARNING.search(text):
            problems.append(f"cell {k} prints a warning: {text.strip()[:200]}")
        problems += [f"cell {k} prints the machine path {f}" for f in folders if f and f in text]
    return problems


def machine_folders(run_dir: Path) -> list[str]:
    data = [os.environ.get(v) for v in ("BUSI_ROOT", "BUS_UCLM_ROOT")]
    roots = [str(Path(d).resolve()) for d in data if d]
    return [
        *roots,
        str(config.cache_dir().resolve()),
        str(run_dir.resolve()),
        str(config.repo_root()),
        str(Path.home()),
    ]


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_an_executed_chapter_prints_no_warning_and_no_machine_path(quick_run, name):
    errors = quick_run.upto(name[:2])
    if errors.get(name) is not None or name not in errors:
        pytest.fail(f"{name} did not run")
    folders = [f for f in machine_folders(quick_run.run_dir) if f != "/"]
    executed = nbformat.read(quick_run.run_dir / "notebooks" / name, as_version=4)
    assert noise(executed, folders) == []


def test_the_noise_check_sees_a_warning_and_a_path():
    """The negative control: a planted FutureWarning and a planted cache path are both named."""
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="/x.py:3: FutureWarning: old\n  warnings.warn("),
        nbformat.v4.new_output("display_data", data={"text/markdown": "Data: `/srv/cache/extracted/BUSI`"}),
        nbformat.v4.new_output("stream", name="stdout", text="run folder: runs/quick"),
    ]
    nb.cells.append(cell)
    assert noise(nb, ["/srv/cache"]) == [
        "cell 0 prints a warning: /x.py:3: FutureWarning: old\n  warnings.warn(",
        "cell 0 prints the machine path /srv/cache",
    ]


MAX_CELL_LINES, MAX_CHAPTER_MEDIAN, MAX_COURSE_MEDIAN = 12, 5, 4


def code_cell_lengths(nb) -> list[int]:
    """Non-blank lines of every code cell but the ``parameters`` cell (papermill's, not a lesson)."""
    return [
        sum(1 for line in c.source.splitlines() if line.strip())
        for c in nb.cells
        if c.cell_type == "code" and "parameters" not in c.get("metadata", {}).get("tags", [])
    ]


def cell_problems(chapters: dict[str, list[int]]) -> list[str]:
    """Where the chapters break the cell targets: a cell over 12 lines, a chapter whose median code
    cell is over 5, a course median over 4 (fastbook's chapters run at 2-3)."""
    problems = [f"{n}: a code cell of {k} lines" for n, ks in chapters.items() for k in ks if k > MAX_CELL_LINES]
    problems += [
        f"{n}: median {statistics.median(ks)}"
        for n, ks in chapters.items()
        if statistics.median(ks) > MAX_CHAPTER_MEDIAN
    ]
    every = [k for ks in chapters.values() for k in ks]
    if statistics.median(every) > MAX_COURSE_MEDIAN:
        problems.append(f"the course: median {statistics.median(every)}")
    return problems


def test_chapters_are_told_in_short_cells():
    chapters = {p.name: code_cell_lengths(nbformat.read(p, as_version=4)) for p in course_notebooks()}
    assert cell_problems(chapters) == []
    assert cell_problems({"planted.ipynb": [2, 3, 13, 9, 9]}) == [  # the negative control
        "planted.ipynb: a code cell of 13 lines",
        "planted.ipynb: median 9",
        "the course: median 9",
    ]
