"""The library's layout: one folder per stage of the course, no import cycle, short modules, a
README map that lists what is there, and the old flat names still importing for one release."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from busi_utils import _aliases
from busi_utils.core import config

ROOT = config.repo_root()
PACKAGE = ROOT / "busi_utils"
MAX_LINES = 300


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        out[name] = path
    return out


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """Every busi_utils module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("busi_utils"):
            found |= {node.module} & set(known)
            found |= {f"{node.module}.{a.name}" for a in node.names} & set(known)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names} & set(known)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node] - {node}):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if not state.get(nxt) and (cycle := visit(nxt, stack)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if not state.get(node) and (cycle := visit(node, [])):
            return cycle
    return None


def test_no_module_imports_itself_back_through_another():
    known = modules()
    graph = {name: imports_of(path, known) for name, path in known.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    graph["busi_utils.core.files"].add("busi_utils.stage2.fusion")  # a negative control: a planted cycle
    graph["busi_utils.stage2.fusion"].add("busi_utils.core.files")
    assert find_cycle(graph)


def test_every_module_is_short_and_lives_in_its_stage():
    known = modules()
    long = {name: n for name, p in known.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    top = {name for name in known if name.count(".") == 1}
    assert top <= {"busi_utils._aliases", "busi_utils.course", "busi_utils.book"} | {
        f"busi_utils.{stage}" for stage in ("core", "data", "stage1", "stage2", "adapt", "evaluation", "serve")
    }, top


def readme_map() -> set[str]:
    """The modules the README's map names: ``folder/`` lines, then their indented modules."""
    block = (ROOT / "README.md").read_text().split("<!-- module-map -->")[1].split("<!-- /module-map -->")[0]
    listed, folder = set(), ""
    for line in block.splitlines():
        if m := re.match(r"^ {4}([a-z0-9_]+)/(\s|$)", line):
            folder = m.group(1)
        elif m := re.match(r"^ {6}([a-z0-9_]+)(\s|$)", line):
            listed.add(f"{folder}/{m.group(1)}")
        elif m := re.match(r"^ {4}([a-z0-9_]+)(\s|$)", line):
            folder = ""
            listed.add(m.group(1))
    return listed


def test_the_readme_map_lists_every_module_and_nothing_else():
    actual = set()
    for name in modules():
        parts = name.split(".")[1:]
        if len(parts) == 2 or parts in (["course"], ["book"]):
            actual.add("/".join(parts))
    listed = readme_map()
    assert listed == actual, f"missing from the README: {sorted(actual - listed)}; gone: {sorted(listed - actual)}"


@pytest.mark.parametrize("old", sorted(_aliases.MOVED))
def test_an_old_flat_name_still_imports_with_a_warning(old):
    new = __import__(f"busi_utils.{_aliases.MOVED[old]}", fromlist=["_"])
    sys.modules.pop(f"busi_utils.{old}", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = __import__(f"busi_utils.{old}", fromlist=["_"])
    assert any(issubclass(w.category, DeprecationWarning) and _aliases.MOVED[old] in str(w.message) for w in caught)
    public = [n for n in dir(new) if not n.startswith("_")]
    assert public and all(getattr(module, n) is getattr(new, n) for n in public)


def test_an_old_command_still_runs():
    result = subprocess.run([sys.executable, "-m", "busi_utils.infer", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--folder" in result.stdout


def test_imports_sit_at_the_top_unless_a_comment_says_why():
    """An import inside a function hides a dependency; the library keeps one only for a reason it
    states on the line (a slow import, or the torch-free command line)."""
    silent = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        text = "\n".join(lines[node.lineno - 1 : node.end_lineno])
                        if "#" not in text:
                            silent.append(f"{name}:{node.lineno}: {text.strip()}")
    assert not silent, silent


def test_lesion_confidence_averages_a_speck_down_but_not_a_lesion():
    from busi_utils.core.images import lesion_confidence

    speck, blob = np.zeros((32, 32)), np.zeros((32, 32))
    speck[10, 10:12] = 0.9
    blob[8:16, 8:16] = 0.9
    assert lesion_confidence(speck, 1) == lesion_confidence(blob, 1) == pytest.approx(0.9)  # the control: one pixel
    assert lesion_confidence(blob, 5) == pytest.approx(0.9) and lesion_confidence(speck, 5) < 0.1
    rng = np.random.default_rng(0)
    p = rng.random((3, 12, 14))
    brute = [max(x[i : i + 3, j : j + 3].mean() for i in range(10) for j in range(12)) for x in p]
    assert np.allclose(lesion_confidence(p, 3), brute)


def test_importing_busi_utils_silences_torchvisions_jit_notice_and_nothing_else():
    """The one filter the package installs: torch's deprecation of torch.jit.script, raised by
    fastai's import (a machine path a learner cannot act on), also in a process it starts (a
    course kernel imports fastai first). The control: without busi_utils the same import prints
    it; with it, other warnings still show."""
    import os

    code = "import fastai.vision.all, warnings; warnings.warn('still shown', FutureWarning)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    bare = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    child = "import busi_utils, subprocess, sys; subprocess.run([sys.executable, '-c', " + repr(code) + "])"
    ours = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env)
    if "jit.script" not in bare.stderr:
        pytest.skip("this torch/torchvision pair raises no jit.script notice")
    assert "jit.script" not in ours.stderr and "still shown" in ours.stderr


STAGES = ("core", "data", "stage1", "stage2", "adapt", "evaluation", "serve")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a stage to a later one in :data:`STAGES` (a module may use what lies
    below it, never what lies above)."""

    def rank(name: str) -> int:
        part = name.split(".")[1]
        return STAGES.index(part) if part in STAGES else len(STAGES)  # course, book: above everything

    edges = ((a, b) for a, targets in graph.items() for b in targets if "." in a and "." in b)  # not the package
    return sorted(f"{a} -> {b}" for a, b in edges if rank(b) > rank(a))


def test_imports_point_down_the_stage_list():
    known = modules()
    graph = {name: imports_of(path, known) for name, path in known.items()}
    assert upward_imports(graph) == []
    graph["busi_utils.core.viz"].add("busi_utils.data.busi")  # a negative control: core reading the data stage
    assert upward_imports(graph) == ["busi_utils.core.viz -> busi_utils.data.busi"]
