"""The run folder's contract: one module names its files, and its JSON files keep their schema."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest

from busi_utils.core import config, files, runfolder
from busi_utils.core.errors import SchemaError
from busi_utils.evaluation import report

ROOT = config.repo_root()
RUN_FILE = re.compile(
    r"(stage1_summary|unet_fold|classifier_summary|split_manifest|duplicate_groups|index\.csv|source\.json|manifest\.csv|"
    r"metrics\.json|timing\.json|random_split\.json|recipe\.json|ood\.npz|\.onnx|test_uncertainty)"
)


def _string_constants(source: str):
    """String literals of Python code, docstrings excepted (prose may name a file)."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.value


def test_no_run_folder_file_name_outside_runfolder():
    offenders = []
    for path in sorted((ROOT / "busi_utils").rglob("*.py")) + sorted((ROOT / "scripts").glob("*.py")):
        if path.name == "runfolder.py":
            continue
        offenders += [f"{path.name}: {s!r}" for s in _string_constants(path.read_text()) if RUN_FILE.search(s)]
    for nb_path in sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "app").glob("*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                code = "\n".join(line for line in cell.source.splitlines() if not line.startswith(("%", "!")))
                offenders += [f"{nb_path.name}: {s!r}" for s in _string_constants(code) if RUN_FILE.search(s)]
    assert not offenders, offenders


def test_metrics_json_of_the_quick_run_matches_its_schema(quick_paths):
    metrics = files.read_json(quick_paths.metrics_json)
    runfolder.validate(metrics, runfolder.METRICS_SCHEMA, "metrics.json")
    runfolder.validate(files.read_json(quick_paths.export_recipe), runfolder.EXPORT_RECIPE_SCHEMA, "recipe.json")
    report.read_classifier_summary(quick_paths)
    broken = dict(metrics, segmentation={k: v for k, v in metrics["segmentation"].items() if k != "dice_mean"})
    with pytest.raises(SchemaError, match="segmentation.*dice_mean"):
        runfolder.validate(broken, runfolder.METRICS_SCHEMA, "metrics.json")


def test_write_metrics_refuses_a_bad_file_and_keeps_the_old_one(tmp_path):
    paths = runfolder.RunPaths.for_profile("quick", tmp_path / "run")
    files.atomic_write_json(paths.metrics_json, {"kept": True})
    with pytest.raises(SchemaError, match="metrics.json"):
        report.write_metrics(paths, {"profile": "quick"})
    assert files.read_json(paths.metrics_json) == {"kept": True}
    assert [p.name for p in paths.root.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as tmp:
            Path(tmp).write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def _strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{path.name}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_every_json_file_the_course_writes_is_strict_json(complete_quick_paths):
    """jq, JavaScript and strict parsers refuse NaN / Infinity: the course writes null instead."""
    found = sorted(p for p in complete_quick_paths.root.rglob("*.json") if "notebooks" not in p.parts)
    assert {p.name for p in found} >= {
        "metrics.json",
        "classifier_summary.json",
        "recipe.json",
        "source.json",
        "random_split.json",
    }
    for path in found:
        _strict_json(path)


def test_undefined_numbers_are_written_as_null(tmp_path):
    import numpy as np

    files.atomic_write_json(
        tmp_path / "x.json", {"auc": float("nan"), "n": np.int64(3), "v": [np.float32(0.5), np.inf]}
    )
    assert _strict_json(tmp_path / "x.json") == {"auc": None, "n": 3, "v": [0.5, None]}


def test_a_cached_result_is_read_back_for_the_same_inputs_and_remade_for_others(tmp_path):
    """Chapter 5's re-run reads the leaky-split experiment back (``files.cached_json``) instead
    of training again, but never serves an answer made from other inputs."""
    calls = []

    def make(value):
        def compute():
            calls.append(value)
            return {"accuracy": value}

        return compute

    path = tmp_path / "random_split.json"
    key = {"images": "abc", "recipe": {"epochs": 2}, "seed": 0}
    assert files.cached_json(path, key, make(0.7)) == {"accuracy": 0.7}
    assert files.cached_json(path, key, make(0.1)) == {"accuracy": 0.7} and calls == [0.7]
    assert files.cached_json(path, dict(key, seed=1), make(0.6)) == {"accuracy": 0.6} and calls == [0.7, 0.6]
    _strict_json(path)


def test_referral_verdict_words_the_fallback_and_the_intervals():
    """Chapters 5 and 6 print this line instead of prose that could contradict the numbers."""
    missed = {"cutoff_target": 0.9, "clear_share": 0.1, "cutoff_accuracy": 0.64}
    correct, clear = np.r_[np.ones(30), np.zeros(30), np.ones(40)], np.r_[np.ones(30, bool), np.zeros(70, bool)]
    apart = report.referral_verdict(missed, correct, clear, 200, 0)
    assert "no cutoff reached the 90% target" in apart and "70% of these cases referred" in apart
    assert "referral filtered" in apart
    few = report.referral_verdict(missed | {"cutoff_accuracy": 0.95}, correct, np.arange(100) < 5, 200, 0)
    assert "reached the 90% target" in few and "too few cases" in few


def test_interval_verdict_follows_the_interval():
    assert "above zero: up" in report.interval_verdict((0.01, 0.2), "up", "down")
    assert "below zero: down" in report.interval_verdict((-0.2, -0.01), "up", "down")
    assert "cannot tell" in report.interval_verdict((-0.1, 0.1), "up", "down")
