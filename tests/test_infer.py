"""Predictor, CLI and widget app on the exported quick-profile models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import png_header_only
from PIL import Image

from busi_utils import data
from busi_utils.core import images, runfolder
from busi_utils.core.config import CLASSES
from busi_utils.serve import infer


@pytest.fixture(scope="module")
def predictor(quick_paths):
    return infer.Predictor(quick_paths.root)


@pytest.fixture(scope="module")
def scan(quick_test_image):
    return np.asarray(Image.open(quick_test_image).convert("RGB"))


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "busi_utils.serve.infer", *map(str, args)], capture_output=True, text=True
    )


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
        "rgb.png": rgb,
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
        "gray.png": gray,
        "gray16.png": Image.fromarray(np.asarray(gray, dtype=np.uint16) * 257),
        "photo.jpg": rgb,
        "tiny64.png": gray.resize((64, 80)),
        "huge5000.png": gray.resize((5000, 4000), Image.NEAREST),
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
    return {
        "notes.png": "not an image",
        "empty.png": "empty file",
        "truncated.png": "truncated",
        "small.png": "too small",
    }


def test_every_rejected_input_gets_its_message_and_exit_code(quick_paths, scan, tmp_path):
    bad = _bad_inputs(tmp_path, scan)
    for name, problem in bad.items():
        with pytest.raises(infer.InputError, match=problem):
            images.to_grayscale(tmp_path / name)
        r = cli("--image", tmp_path / name, "--run", quick_paths.root, "--out", tmp_path / "out")
        assert r.returncode == 2, name
        assert name in r.stderr and problem in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_missing_or_incomplete_run_folder(quick_paths, scan, tmp_path):
    Image.fromarray(scan).save(tmp_path / "scan.png")
    r = cli("--image", tmp_path / "scan.png", "--run", tmp_path / "nowhere")
    assert r.returncode == 3 and "run folder not found" in r.stderr
    partial = tmp_path / "partial"
    shutil.copytree(quick_paths.models, partial / "models")  # the classifiers, but no fold U-Net
    r = cli("--image", tmp_path / "scan.png", "--run", partial)
    assert r.returncode == 3 and "unet_fold0.pt" in r.stderr and "incomplete" in r.stderr


def test_cli_json_and_files(quick_paths, scan, tmp_path):
    Image.fromarray(scan).save(tmp_path / "scan.png")
    r = cli("--image", tmp_path / "scan.png", "--run", quick_paths.root, "--out", tmp_path / "out", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) >= {
        "image",
        "label",
        "probabilities",
        "entropy",
        "uncertain",
        "lesion_area_fraction",
        "disclaimer",
        "out_of_distribution",
        "reliable",
        "ood_score",
    }
    assert set(doc["probabilities"]) == set(CLASSES) and sum(doc["probabilities"].values()) == pytest.approx(
        1, abs=1e-4
    )
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
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "good1_mask.png",
        "good1_overlay.png",
        "good2_mask.png",
        "good2_overlay.png",
    ]


def test_folder_mode_given_a_file_says_so(quick_paths, scan, tmp_path):
    Image.fromarray(scan).save(tmp_path / "scan.png")
    r = cli("--folder", tmp_path / "scan.png", "--run", quick_paths.root, "--out", tmp_path / "out")
    assert r.returncode == 2 and "scan.png: not a folder" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "out").exists()


def test_help_explains_every_option():
    r = cli("--help")
    for opt in ("--image", "--folder", "--run", "--out", "--json", "--threshold"):
        assert opt in r.stdout


def test_widget_app_headless(predictor, scan, tmp_path):
    from busi_utils.serve.widgets import InferenceApp

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


def test_oversized_images_are_refused_from_the_header(quick_paths, tmp_path):
    """A 20000 px decompression bomb and a 12000 x 9000 image: exit 2, one line, no decoding."""
    for name, (w, h) in {"bomb.png": (20000, 20000), "wide.png": (12000, 9000)}.items():
        png_header_only(tmp_path / name, w, h)
        assert (tmp_path / name).stat().st_size < 5000
        with pytest.raises(infer.InputError, match="too large"):
            images.to_grayscale(tmp_path / name)
        r = cli("--image", tmp_path / name, "--run", quick_paths.root, "--out", tmp_path / "out")
        assert r.returncode == 2 and name in r.stderr and "too large" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1, r.stderr
    with pytest.raises(infer.InputError, match="too large"):
        images.to_grayscale(b"\0" * (images.MAX_BYTES + 1))


def test_onnx_export_matches_the_torch_models(quick_paths, scan, tmp_path):
    """Same images through the torch graphs and the exported ONNX graphs: probabilities within
    1e-4, and masks equal at every pixel whose lesion probability is not within 1e-3 of the
    threshold. Float32 kernels differ between CPUs (and onnxruntime's from torch's) by about
    1e-6 here; a pixel sitting on the threshold may fall either way on another machine, so
    only those may differ, and the count of differing pixels is printed."""
    torch_p = infer.Predictor(quick_paths.root, backend="torch")
    onnx_p = infer.Predictor(quick_paths.root, backend="onnx")
    assert (torch_p.backend_name, onnx_p.backend_name) == ("torch", "onnx")
    rng = np.random.default_rng(0)
    inputs = [
        scan,
        scan[::-1].copy(),
        np.asarray(Image.fromarray(scan).resize((300, 200))),
        rng.integers(0, 255, (128, 160), dtype=np.uint8),
    ]
    worst_p, worst_px = 0.0, 0
    for x in inputs:
        a, b = torch_p.predict(x), onnx_p.predict(x)
        worst_p = max(worst_p, max(abs(a.probabilities[c] - b.probabilities[c]) for c in CLASSES))
        on_threshold = np.abs(a.mask_prob - a.threshold) < 1e-3
        assert not ((a.mask != b.mask) & ~on_threshold).any(), "masks differ away from the threshold"
        worst_px = max(worst_px, int((a.mask != b.mask).sum()))
        assert a.ood_score == pytest.approx(b.ood_score, rel=1e-3)
    print(f"largest probability difference {worst_p:.2e}, differing mask pixels {worst_px}")
    assert worst_p < 1e-4


def test_light_path_imports_neither_torch_nor_fastai(quick_paths, scan, tmp_path):
    Image.fromarray(scan).save(tmp_path / "scan.png")
    code = (
        "import sys\nfrom busi_utils.serve import infer\n"
        f"p = infer.Predictor({str(quick_paths.root)!r})\n"
        f"p.predict({str(tmp_path / 'scan.png')!r})\n"
        "print(p.backend_name, sorted(m for m in ('torch', 'fastai', 'timm', 'pandas') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["onnx", "[]"], r.stdout


def test_missing_or_stale_export_falls_back_to_torch_with_a_notice(quick_paths, scan, tmp_path):
    run = tmp_path / "run"
    # the models, without the executed notebooks, the stored masks and the predictions
    shutil.copytree(quick_paths.root, run, ignore=shutil.ignore_patterns("notebooks", "preds", "train", "test"))
    paths = runfolder.RunPaths(run)
    notices = []
    assert infer.Predictor(run, notice=notices.append).backend_name == "onnx" and not notices
    recipe = json.loads(paths.export_recipe.read_text())
    recipe["views"]["lesion_crop"]["members"][0]["fingerprint"] = "0" * 64  # as if a member had been retrained since
    paths.export_recipe.write_text(json.dumps(recipe))
    p = infer.Predictor(run, notice=notices.append)
    assert p.backend_name == "torch" and len(notices) == 1 and "stale" in notices[0]
    paths.export_recipe.unlink()
    assert infer.Predictor(run, notice=notices.append).backend_name == "torch" and "no ONNX export" in notices[-1]
    with pytest.raises(infer.RunFolderError, match="ONNX"):
        infer.Predictor(run, backend="onnx")
    assert p.predict(scan).label in CLASSES


def test_out_of_distribution_inputs_are_flagged_but_answered(quick_paths, predictor, scan):
    """The flag is the score against 1; noise and a page of text are flagged (on the real BUSI;
    the synthetic stand-in's scans are noise-like themselves); a flagged input keeps its outputs."""
    from PIL import ImageDraw

    noise = np.random.default_rng(1).integers(0, 256, (256, 256), dtype=np.uint8)
    page = Image.new("L", (400, 300), 255)
    for line in range(12):
        ImageDraw.Draw(page).text((10, 10 + 24 * line), "patient report: lesion 12 mm, benign", fill=0)
    real = data.read_source(quick_paths.source_json).kind != "synthetic"
    for x, unfamiliar in ((scan, False), (noise, True), (np.asarray(page), True)):
        p = predictor.predict(x)
        assert p.ood_score is not None and p.out_of_distribution == (p.ood_score > 1)
        assert p.to_json()["reliable"] == (not p.out_of_distribution)
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5) and p.mask.ndim == 2
        if real and unfamiliar:
            assert p.out_of_distribution, p.ood_score


def test_real_test_scans_are_rarely_called_unfamiliar(quick_paths, predictor):
    """The false-alarm side of the check: on the quick run's test scans (never seen in training or
    in fitting the thresholds) few are flagged, in metrics.json and by the Predictor alike. The
    bound is loose (small validation set, two views at 1% each); a check that flags one scan in
    five has stopped meaning anything."""
    flagged = json.loads(quick_paths.metrics_json.read_text())["ood"]["flagged_test_fraction"]
    assert flagged <= 0.2, flagged
    index = data.read_index(quick_paths.index_csv).set_index("image_id")
    test_ids = quick_paths.read_split().query("split == 'test'")["image_id"].head(10)
    answers = [predictor.predict(index.loc[i, "image_path"]).out_of_distribution for i in test_ids]
    assert sum(answers) <= 3, answers
