"""The command lines refuse what they cannot use before any model loads, each with one line
naming the file and the problem; what they print as JSON is strict JSON. No course run needed:
a run folder that does not exist proves that no model was looked for (that would be exit 3),
and a stand-in Predictor answers where an answer is needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import png_header_only
from PIL import Image

from busi_utils.serve import infer, predictor
from busi_utils.serve.prediction import Prediction


def cli(*args, module: str = "busi_utils.serve.infer") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def scan(tmp_path) -> Path:
    path = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 260), dtype=np.uint8)).save(path)
    return path


def _bad_files(folder: Path, scan: Path) -> dict[str, str]:
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("this is text")
    (folder / "truncated.png").write_bytes(scan.read_bytes()[:300])
    Image.new("L", (10, 10)).save(folder / "tiny.png")
    png_header_only(folder / "huge.png", 12000, 9000)
    png_header_only(folder / "bomb.png", 20000, 20000)
    return {
        "empty.png": "empty file",
        "notes.png": "not an image",
        "truncated.png": "truncated",
        "tiny.png": "too small",
        "huge.png": "too large",
        "bomb.png": "too large",
    }


def test_each_bad_file_is_refused_before_any_model_is_looked_for(scan, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name, problem in _bad_files(bad, scan).items():
        r = cli("--image", bad / name, "--run", tmp_path / "no_run", "--out", tmp_path / "out")
        assert r.returncode == 2, (name, r.stderr)
        assert r.stderr.count("\n") == 1 and name in r.stderr and problem in r.stderr, r.stderr
    control = cli("--image", scan, "--run", tmp_path / "no_run", "--out", tmp_path / "out")
    assert control.returncode == 3 and "run folder not found" in control.stderr  # a good file goes on to the models


def test_the_refusal_imports_no_model_code(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    code = (
        "import sys\nfrom busi_utils.serve import infer\n"
        f"rc = infer.main(['--image', {str(tmp_path / 'empty.png')!r}, '--out', {str(tmp_path / 'out')!r}])\n"
        "heavy = [m for m in ('busi_utils.serve.predictor', 'onnxruntime', 'torch', 'scipy', 'pandas') if m in sys.modules]\n"
        "print(rc, heavy)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "2 []", r.stdout + r.stderr


@pytest.mark.parametrize("value", ["nan", "2", "0", "1", "-0.1", "inf", "half"])
def test_a_threshold_outside_0_1_is_refused(scan, tmp_path, value):
    r = cli("--image", scan, "--threshold", value, "--run", tmp_path / "no_run")
    assert r.returncode == 2 and "--threshold" in r.stderr and "Traceback" not in r.stderr


def test_an_output_that_cannot_be_written_is_named(scan, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    r = cli("--image", scan, "--out", blocker / "predictions", "--run", tmp_path / "no_run")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "cannot be written" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    r = cli("--image", scan, "--out", blocker, "--run", tmp_path / "no_run")
    assert r.returncode == 2 and "is not a folder" in r.stderr


def test_two_inputs_with_one_stem_are_refused_by_name(scan, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(scan).save(folder / "Case.png")
    Image.open(scan).save(folder / "case.jpg")  # one output name where file names ignore case
    (folder / "other.txt").write_text("notes")  # unreadable: listed as such, no clash with anything
    r = cli("--folder", folder, "--run", tmp_path / "no_run", "--out", tmp_path / "out")
    assert r.returncode == 2 and "Case.png" in r.stderr and "case.jpg" in r.stderr and "rename" in r.stderr
    (folder / "case.jpg").rename(folder / "other.jpg")  # the control: distinct stems go on to the models
    assert cli("--folder", folder, "--run", tmp_path / "no_run", "--out", tmp_path / "out").returncode == 3


class _StandIn:
    """A Predictor that answers NaN where a number is undefined (what strict JSON must survive)."""

    def __init__(self, *args, **kwargs):
        pass

    def predict(self, path, threshold=0.5) -> Prediction:
        gray = np.asarray(Image.open(path).convert("L"))
        probs = {"normal": float("nan"), "benign": 0.5, "malignant": 0.5}
        return Prediction(np.zeros(gray.shape, np.float32), probs, "benign", float("nan"), False, threshold, gray,
                          float("inf"), True, None, float("nan"), [])  # fmt: skip


def test_json_output_is_strict_and_every_input_has_its_own_outputs(scan, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predictor, "Predictor", _StandIn)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        Image.open(scan).save(folder / name)
    assert infer.main(["--folder", str(folder), "--out", str(tmp_path / "out"), "--json"]) == 0
    text = capsys.readouterr().out

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    doc = json.loads(text, parse_constant=refuse)
    assert [d["probabilities"]["normal"] for d in doc] == [None, None] and doc[0]["ood_score"] is None
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a_mask.png",
        "a_overlay.png",
        "b_mask.png",
        "b_overlay.png",
    ]


def test_evaluate_checks_its_output_and_bootstrap_before_the_data(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    module = "busi_utils.evaluation.evaluate"
    r = cli("--data", tmp_path / "nowhere", "--out", blocker / "report.json", module=module)
    assert r.returncode == 2 and "cannot be written" in r.stderr and r.stderr.count("\n") == 1
    r = cli("--data", tmp_path / "nowhere", "--bootstrap", "0", module=module)
    assert r.returncode == 2 and "--bootstrap" in r.stderr
