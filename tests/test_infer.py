"""Predictor, CLI and widget app on the exported quick-profile models."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from busi_utils import infer
from busi_utils.config import CLASSES


@pytest.fixture(scope="module")
def predictor(quick_paths):
    return infer.Predictor(quick_paths.root)


@pytest.fixture(scope="module")
def scan(quick_paths):
    import pandas as pd

    split = pd.read_csv(quick_paths.split_csv, keep_default_na=False)
    idx = pd.read_csv(quick_paths.index_csv, keep_default_na=False).set_index("image_id")
    return np.asarray(Image.open(idx.loc[split.query("split == 'test'")["image_id"].iloc[0], "image_path"]).convert("RGB"))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "busi_utils.infer", *map(str, args)], capture_output=True, text=True)


def test_prediction_shapes_and_probabilities(predictor, scan):
    p = predictor.predict(scan)
    assert p.mask_prob.shape == scan.shape[:2] and p.mask.dtype == bool
    assert 0 <= p.mask_prob.min() and p.mask_prob.max() <= 1
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert p.label in CLASSES and p.label == max(p.probabilities, key=p.probabilities.get)
    assert p.overlay().shape == scan.shape[:2] + (3,)


def _variants(scan: np.ndarray, tmp_path):
    rgb = Image.fromarray(scan)
    gray = rgb.convert("L")
    out = {
        "rgb.png": rgb, "rgba.png": rgb.convert("RGBA"), "palette.png": rgb.convert("P"), "gray.png": gray,
        "gray16.png": Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257), "photo.jpg": rgb,
        "tiny64.png": gray.resize((64, 80)), "huge5000.png": gray.resize((5000, 4000), Image.NEAREST),
    }
    paths = []
    for name, img in out.items():
        img.save(tmp_path / name)
        paths.append(tmp_path / name)
    return paths


def test_every_accepted_format_gives_a_prediction(predictor, scan, tmp_path):
    base = predictor.predict(scan).probabilities
    for path in _variants(scan, tmp_path):
        p = predictor.predict(path)
        assert p.mask_prob.shape == Image.open(path).size[::-1], path.name
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        if path.name in ("rgb.png", "gray.png", "gray16.png"):  # same pixels, same answer
            assert p.probabilities == pytest.approx(base, abs=0.02), path.name
    assert predictor.predict(Image.fromarray(scan)).label == predictor.predict(scan).label


def _bad_inputs(tmp_path, scan):
    (tmp_path / "notes.png").write_text("this is text")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.fromarray(scan).save(tmp_path / "whole.png")
    raw = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(raw[: len(raw) // 3])
    (tmp_path / "whole.png").unlink()
    Image.fromarray(scan).resize((40, 30)).save(tmp_path / "small.png")
    return {"notes.png": "not an image", "empty.png": "empty file", "truncated.png": "truncated", "small.png": "too small"}


def test_every_rejected_input_gets_its_message_and_exit_code(quick_paths, scan, tmp_path):
    bad = _bad_inputs(tmp_path, scan)
    for name, problem in bad.items():
        with pytest.raises(infer.InputError, match=problem):
            infer.to_grayscale(tmp_path / name)
        r = cli("--image", tmp_path / name, "--run", quick_paths.root, "--out", tmp_path / "out")
        assert r.returncode == 2, name
        assert name in r.stderr and problem in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_missing_or_incomplete_run_folder(quick_paths, scan, tmp_path):
    Image.fromarray(scan).save(tmp_path / "scan.png")
    r = cli("--image", tmp_path / "scan.png", "--run", tmp_path / "nowhere")
    assert r.returncode == 3 and "run folder not found" in r.stderr
    partial = tmp_path / "partial"
    shutil.copytree(quick_paths.models, partial / "models")
    (partial / "models" / "unet_final.pt").unlink()
    r = cli("--image", tmp_path / "scan.png", "--run", partial)
    assert r.returncode == 3 and "unet_final.pt" in r.stderr and "incomplete" in r.stderr


def test_cli_json_and_files(quick_paths, scan, tmp_path):
    Image.fromarray(scan).save(tmp_path / "scan.png")
    r = cli("--image", tmp_path / "scan.png", "--run", quick_paths.root, "--out", tmp_path / "out", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) >= {"image", "label", "probabilities", "entropy", "uncertain", "lesion_area_fraction", "disclaimer"}
    assert set(doc["probabilities"]) == set(CLASSES) and sum(doc["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    mask = Image.open(tmp_path / "out" / "scan_mask.png")
    assert mask.size == (scan.shape[1], scan.shape[0])
    assert Image.open(tmp_path / "out" / "scan_overlay.png").mode == "RGB"
    table = cli("--image", tmp_path / "scan.png", "--run", quick_paths.root, "--out", tmp_path / "out")
    assert "scan.png" in table.stdout and doc["label"] in table.stdout


def test_folder_mode_processes_good_files_and_lists_bad_ones(quick_paths, scan, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    bad = _bad_inputs(folder, scan)
    Image.fromarray(scan).save(folder / "good1.png")
    Image.fromarray(scan).convert("L").save(folder / "good2.jpg")
    r = cli("--folder", folder, "--run", quick_paths.root, "--out", tmp_path / "out", "--json")
    assert r.returncode == 2
    done = json.loads(r.stdout)
    assert sorted(d["image"].rsplit("/", 1)[-1] for d in done) == ["good1.png", "good2.jpg"]
    for name in bad:
        assert name in r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good1_mask.png", "good1_overlay.png", "good2_mask.png", "good2_overlay.png"]


def test_help_explains_every_option():
    r = cli("--help")
    for opt in ("--image", "--folder", "--run", "--out", "--json", "--threshold"):
        assert opt in r.stdout


def test_widget_app_headless(predictor, scan, tmp_path):
    from busi_utils.widgets import InferenceApp

    Image.fromarray(scan).save(tmp_path / "scan.png")
    app = InferenceApp(predictor, {"scan": str(tmp_path / "scan.png")})
    assert "Research and teaching only" in app.disclaimer.value
    app.examples.value = str(tmp_path / "scan.png")  # picking a test image runs the pipeline
    p = app.prediction
    assert p is not None and app.mask_view.value and app.overlay_view.value and app.chart.value
    assert p.label in app.verdict.value
    areas = {}
    for t in (0.05, 0.95):
        app.threshold.value = t
        areas[t] = np.asarray(Image.open(__import__("io").BytesIO(app.mask_view.value))).astype(bool).sum()
    assert areas[0.05] > areas[0.95]  # moving the slider changes the binary mask
    app.set_image(b"not an image")
    assert "Cannot analyse" in app.error.value
