"""External validation: the loader (both layouts, every bad input), the patient bootstrap,
the evaluate CLI, and the real BUS-UCLM when BUS_UCLM_ROOT is set."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import png_header_only
from PIL import Image

from busi_utils.core.errors import DuplicateEntryError, LabelsFileError, LayoutError, MaskError
from busi_utils.data import BusiDataError, external, synthetic
from busi_utils.evaluation import evaluate, metrics


@pytest.fixture(scope="module", params=["generic", "bus_uclm"])
def ext_root(request, tmp_path_factory) -> Path:
    return synthetic.make_synthetic_external(tmp_path_factory.mktemp(request.param) / "set", layout=request.param)


@pytest.fixture
def ext_copy(tmp_path) -> Path:
    src = synthetic.make_synthetic_external(tmp_path / "orig", layout="generic")
    dest = tmp_path / "copy"
    shutil.copytree(src, dest)
    return dest


def _snapshot(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_both_layouts_load_with_colours_resized_and_missing_masks(ext_root):
    before = _snapshot(ext_root)
    index = external.build_external_index(ext_root, progress=False)
    assert _snapshot(ext_root) == before  # the dataset folder is only read
    assert len(index) == 32 and index["patient"].nunique() == 8
    assert set(index["label"].astype(str)) == {"normal", "benign", "malignant"}
    assert int(index["mask_resized"].sum()) == (index["layout"].iloc[0] == "bus_uclm")  # as published: counted
    for row in index.itertuples():
        gray, mask = external.load_external_pair(row._asdict())
        assert gray.dtype == np.uint8 and mask.shape == gray.shape
        assert mask.any() == (row.label != "normal" and row.has_mask)  # green and red both binarised
    if index["layout"].iloc[0] == "generic":
        assert int((~index["has_mask"]).sum()) == 1  # still indexed: it counts for classification
    else:
        assert {"doppler", "marks"} <= set(index.columns)


def _rewrite_labels(root: Path, edit) -> None:
    table = pd.read_csv(root / "labels.csv")
    edit(table).to_csv(root / "labels.csv", index=False)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda r: _rewrite_labels(r, lambda t: t.assign(label=["tumour"] + list(t["label"][1:]))),
            r"labels\.csv: line 2: unknown label 'tumour'",
        ),
        (
            lambda r: (r / "images" / sorted(os.listdir(r / "images"))[0]).write_bytes(b"\x89PNG\r\n\x1a\n garbage"),
            "not a readable image|unreadable",
        ),
        (lambda r: (r / "images" / sorted(os.listdir(r / "images"))[0]).write_bytes(b""), "empty file"),
        (
            lambda r: shutil.copy(r / "masks" / sorted(os.listdir(r / "masks"))[0], r / "masks" / "ZZZZ_999.png"),
            r"ZZZZ_999\.png: mask without an image",
        ),
        (lambda r: _rewrite_labels(r, lambda t: t.iloc[1:]), "image without a label row"),
        (lambda r: (r / "images" / sorted(os.listdir(r / "images"))[0]).unlink(), "listed in labels.csv but missing"),
        (lambda r: (r / "labels.csv").unlink(), "wrongly laid out"),
    ],
)
def test_bad_input_is_a_named_error(ext_copy, damage, message):
    damage(ext_copy)
    with pytest.raises(BusiDataError, match=message):
        external.build_external_index(ext_copy, progress=False)


def _first(root: Path, folder: str, label: str | None = None) -> Path:
    """The first file of ``folder`` (of a scan with ``label`` when given)."""
    table = pd.read_csv(root / "labels.csv")
    names = sorted(table["image"] if label is None else table.loc[table["label"] == label, "image"])
    stem = Path(names[0]).stem
    return next(p for p in sorted((root / folder).iterdir()) if p.stem == stem)


def _blank_mask(path: Path, lesion: bool) -> None:
    with Image.open(path) as m:
        size = m.size
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    if lesion:
        arr[10:20, 10:20] = 255
    Image.fromarray(arr).save(path)


def _scale_mask(path: Path, fx: float, fy: float) -> None:
    with Image.open(path) as m:
        m.resize((max(int(m.width * fx), 1), max(int(m.height * fy), 1)), Image.NEAREST).save(path)


def _latin1(root: Path) -> None:
    lines = (root / "labels.csv").read_text().splitlines()
    lines[3] += "ô"  # line 4's patient gains an accent, saved in Latin-1 (as a spreadsheet may)
    (root / "labels.csv").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (lambda r: (r / "labels.csv").write_bytes(b""), LabelsFileError, r"labels\.csv: empty file"),
        (lambda r: (r / "labels.csv").write_text("image,label,patient\n"), LabelsFileError, "a header but no rows"),
        (lambda r: (r / "labels.csv").write_bytes(b"\xef\xbb\xbf\n"), LabelsFileError, "only a byte-order mark or blank lines"),
        (lambda r: (r / "labels.csv").write_text("\n" + (r / "labels.csv").read_text()), LabelsFileError, "blank lines before the header"),
        (lambda r: png_header_only(_first(r, "masks"), 20000, 20000), MaskError, "mask too large to decode"),
        (_latin1, LabelsFileError, r"labels\.csv: line 4: not UTF-8 text \(byte 0xf4\)"),
        (lambda r: (r / "labels.csv").write_text("image,diagnosis\nx.png,benign\n"), LabelsFileError, "needs the columns image, label"),
        (lambda r: (r / "labels.csv").write_text((r / "labels.csv").read_text() + "a,b,c,d\n"), LabelsFileError, "line 34: more fields"),
        (lambda r: _rewrite_labels(r, lambda t: pd.concat([t, t.iloc[[2, 5, 9]]])), DuplicateEntryError, r"line 34: repeats line 4"),
        (lambda r: _rewrite_labels(r, lambda t: pd.concat([t, t.iloc[[2]].assign(label="normal" if t["label"].iloc[2] != "normal" else "benign")])), DuplicateEntryError, "is listed again"),
        (lambda r: shutil.copy(_first(r, "images"), _first(r, "images").with_suffix(".bmp")), DuplicateEntryError, "one scan, two files"),
        (lambda r: shutil.copy(_first(r, "masks"), _first(r, "masks").with_suffix(".jpg")), DuplicateEntryError, "one scan, two files"),
        (lambda r: (r / "images" / "more").mkdir(), LayoutError, r"images/more: a folder inside images/"),
        (lambda r: (r / "masks" / "more").mkdir(), LayoutError, r"masks/more: a folder inside masks/"),
        (lambda r: _scale_mask(_first(r, "masks", "benign"), 7 / 300, 9 / 240), MaskError, r"more than 2x off on a side"),
        (lambda r: _scale_mask(_first(r, "masks", "benign"), 1.2, 1.1), MaskError, "a mask must match its scan"),
        (lambda r: _first(r, "masks").write_bytes(b""), MaskError, "empty file"),
        (lambda r: _first(r, "masks").write_bytes(_first(r, "masks").read_bytes()[:80]), MaskError, "unreadable or truncated mask"),
        (lambda r: _first(r, "masks").write_text("not a mask"), MaskError, "not a readable mask"),
        (lambda r: _blank_mask(_first(r, "masks", "malignant"), lesion=False), MaskError, r"no lesion pixel \(.*\), but labels\.csv line \d+ labels the scan malignant"),
        (lambda r: _blank_mask(_first(r, "masks", "normal"), lesion=True), MaskError, "lesion pixels on a scan that labels.csv line"),
    ],
)  # fmt: skip
def test_every_broken_external_set_is_a_named_error(ext_copy, damage, error, message):
    """Each problem gets its own kind of error naming the file (and line); the good set loads
    (the negative control: ``test_both_layouts_load_with_colours_resized_and_missing_masks``)."""
    damage(ext_copy)
    with pytest.raises(error, match=message):
        external.build_external_index(ext_copy, progress=False)


def test_a_bom_is_fine_and_a_resize_is_asked_for_and_counted(ext_copy):
    table = ext_copy / "labels.csv"
    table.write_bytes(b"\xef\xbb\xbf" + table.read_bytes())
    assert len(external.build_external_index(ext_copy, progress=False)) == 32
    _scale_mask(_first(ext_copy, "masks", "benign"), 1.2, 1.1)
    index = external.build_external_index(ext_copy, progress=False, resize_masks=True)
    assert int(index["mask_resized"].sum()) == 1 and len(index) == 32


def test_evaluate_refuses_a_broken_set_before_any_model_loads(ext_copy, tmp_path):
    """Exit 2 and one line, with a run folder that does not even exist: the data is checked first."""
    _rewrite_labels(ext_copy, lambda t: pd.concat([t, t.iloc[[2, 5, 9]]]))
    r = _cli("--data", str(ext_copy), "--run", str(tmp_path / "no_run"))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "repeats line" in r.stderr
    assert "Traceback" not in r.stderr


def test_patient_bootstrap_keeps_patients_whole():
    groups = np.repeat(["a", "b", "c", "d"], [1, 3, 5, 2])
    sizes = pd.Series(groups).value_counts()
    rng = np.random.default_rng(0)
    for _ in range(50):
        idx = metrics.resample_indices(rng, len(groups), groups)
        counts = pd.Series(groups[idx]).value_counts()
        assert all(counts[g] % sizes[g] == 0 for g in counts.index)  # every drawn patient comes with all images
        assert len(set(counts.index)) <= 4
    # images as the unit would split patients
    split = [pd.Series(groups[rng.integers(0, 11, 11)]).value_counts() for _ in range(50)]
    assert any(c.get("c", 0) % 5 for c in split)


def test_subset_keeps_whole_patients(ext_root):
    index = external.build_external_index(ext_root, progress=False)
    sub = external.subset_patients(index, 10, seed=0)
    assert 0 < len(sub) <= 10
    for p, part in sub.groupby("patient"):
        assert len(part) == int((index["patient"] == p).sum())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "busi_utils.evaluation.evaluate", *args], capture_output=True, text=True, timeout=600
    )


def test_evaluate_cli_reports_and_fails_cleanly(quick_paths, tmp_path, ext_root):
    out = tmp_path / "report.json"
    ok = _cli("--data", str(ext_root), "--run", str(quick_paths.root), "--out", str(out), "--bootstrap", "50")
    assert ok.returncode == 0, ok.stderr[-2000:]
    import json

    report = json.loads(out.read_text())
    assert report["n_images"] == 32 and report["n_patients"] == 8
    assert set(report["variants"]) == {
        "method",
        "image+pred_mask",
        "lesion_crop",
        "image_only",
        "shape_alone",
        "image+gt_mask",
    }
    assert "method" in ok.stdout and not re.search(r"\bnan\b", ok.stdout.lower())  # nothing undefined is printed
    images = pd.read_csv(evaluate.per_image_path(out))
    assert len(images) == 32 and images["image"].str.startswith("images/").all()
    assert {"patient", "true_label", "method:answer", "method:p_malignant", "lesion_confidence", "dice"} <= set(images)
    assert {"uncertain", "out_of_distribution", "ood_score", "image_only:answer"} <= set(images)
    right = (images["method:answer"] == images["true_label"]).mean()
    assert right == pytest.approx(report["variants"]["method"]["accuracy"])  # the table is what the report scored
    lesions = images.dropna(subset=["dice"])
    assert len(lesions) == report["n_lesion_masks"] and lesions["dice"].mean() == pytest.approx(
        report["dice_mean"], abs=1e-4
    )
    bad = _cli("--data", str(tmp_path / "nowhere"), "--run", str(quick_paths.root))
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    no_run = _cli("--data", str(ext_root), "--run", str(tmp_path / "no_run"))
    assert no_run.returncode == 3 and "no trained models" in no_run.stderr


@pytest.fixture(scope="module")
def real_external():
    root = os.environ.get(external.ENV_VAR)
    if not root:
        pytest.skip(f"{external.ENV_VAR} is not set: the real BUS-UCLM checks need its folder or zip")
    return external.build_external_index(external.resolve_external(root), progress=False)


@pytest.mark.real_data
def test_real_bus_uclm_counts(real_external):
    idx = real_external
    assert len(idx) == 683 and idx["patient"].nunique() == 38
    assert idx["label"].astype(str).value_counts().to_dict() == {"normal": 419, "benign": 174, "malignant": 90}
    assert int(idx["mask_resized"].sum()) == 13 and set(idx.loc[idx["mask_resized"], "patient"]) == {"HESN"}


def _table(labels, preds_by_variant):
    from busi_utils.core.config import CLASSES

    table = pd.DataFrame({"label": labels, "patient": [f"p{k // 2}" for k in range(len(labels))]})
    for v, preds in preds_by_variant.items():
        for c in CLASSES:
            table[f"{v}:p_{c}"] = [0.9 if p == c else 0.05 for p in preds]
    return table


def test_metrics_by_flag_scores_each_side_of_a_flag():
    labels = ["normal", "benign", "malignant", "benign", "normal", "malignant"]
    table = _table(labels, {"image_only": labels[:3] + ["normal"] * 3, "image+pred_mask": labels})
    flags = pd.DataFrame({"marks": [True, True, True, False, False, False]})
    by = evaluate.metrics_by_flag(table, flags, variants=("image_only", "image+pred_mask")).set_index(
        ["value", "variant"]
    )
    assert by.loc[(True, "image_only"), "accuracy"] == 1.0 and by.loc[
        (False, "image_only"), "accuracy"
    ] == pytest.approx(1 / 3)
    assert (by.loc[(False, "image+pred_mask"), "n"], by.loc[(False, "image+pred_mask"), "accuracy"]) == (3, 1.0)


def test_compare_with_busi_puts_home_and_away_side_by_side():
    report = {"variants": {"image_only": {"accuracy": 0.5, "macro_f1": 0.4, "malignant_recall": 0.3, "auc_ovr": 0.6}}}
    busi = {"image_only": {"accuracy": 0.7, "macro_f1": 0.6, "malignant_recall": 0.8, "auc_ovr": 0.9}}
    side = evaluate.compare_with_busi(report, busi)
    drop = side.xs("BUSI test", level=1) - side.xs("external", level=1)
    assert drop.loc["image_only", "macro_f1"] == pytest.approx(0.2) and drop.loc[
        "image_only", "malignant_recall"
    ] == pytest.approx(0.5)


@pytest.fixture
def uclm_copy(tmp_path) -> Path:
    return synthetic.make_synthetic_external(tmp_path / "uclm", layout="bus_uclm")


def _rewrite_info(root: Path, edit) -> None:
    path = root / "INFO.csv"
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    path.write_text("\ufeff" + "\n".join(edit(lines)) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda ls: [ls[0], ls[1].replace(";Benign;", ";Tumour;").replace(";Normal;", ";Tumour;").replace(";Malignant;", ";Tumour;")] + ls[2:], r"INFO\.csv: line 2: unknown label"),
        (lambda ls: [ls[0], ";" + ls[1].split(";", 1)[1]] + ls[2:], r"INFO\.csv: line 2: empty image name"),
        (lambda ls: [ls[0]] + ls[2:], "image without a label row in INFO.csv"),
        (lambda ls: ls + ["ZZZZ_999.jpg;1x1;Benign;no;no;no"], r"ZZZZ_999\.jpg: listed in INFO\.csv but missing"),
    ],
)  # fmt: skip
def test_damaged_bus_uclm_rows_are_named(uclm_copy, damage, message):
    """The BUS-UCLM layout (INFO.csv, ';'-separated with a BOM) names the file and line too."""
    root = external.find_external_dir(uclm_copy)
    assert external.detect_layout(root) == "bus_uclm"
    _rewrite_info(root, damage)
    with pytest.raises(BusiDataError, match=message):
        external.build_external_index(root, progress=False)


def test_evaluate_cli_refuses_an_unknown_adaptation(tmp_path, ext_root):
    r = _cli("--data", str(ext_root), "--run", str(tmp_path), "--adapt", "magic")
    assert r.returncode == 2 and "magic" in r.stderr and "histmatch" in r.stderr


def test_a_seed_study_answers_with_the_seed_s_own_members(quick_paths, tmp_path):
    """`RunModels.with_members` (what scripts/seed_spread.py scores on the external set): with the
    run's own members and rule it gives the run's answers, and its temperature is the one passed;
    with a seed tag it answers with the members saved under that tag; the run's models are left
    as they were; a tag without members is a named error."""
    import torch

    from busi_utils.core.config import CLASSES
    from busi_utils.core.errors import RunFolderError
    from busi_utils.core.runfolder import RunPaths
    from busi_utils.evaluation import pipeline
    from busi_utils.stage2 import classification as cls
    from busi_utils.stage2 import crossfit

    run = tmp_path / "run"
    shutil.copytree(quick_paths.root, run)
    paths = RunPaths(run)
    models = pipeline.RunModels(run)
    index = external.build_external_index(
        synthetic.make_synthetic_external(tmp_path / "set", layout="bus_uclm"), progress=False
    )
    fusion, temperature = models.summary["fusion"], models.finalised["temperature"]
    malignant = CLASSES.index("malignant")
    for view in models.graphs:  # seed 7's members: the run's, pushed to answer "malignant"
        for k in models.summary["members"]:
            model, info = cls.load_classifier(crossfit.member_path(paths, view, k))
            with torch.no_grad():
                [m for m in model[1].modules() if isinstance(m, torch.nn.Linear)][-1].bias[malignant] += 50.0
            cls.save_classifier(crossfit.member_path(paths, view, k, 7), model, info)

    run_answer, _ = pipeline.predict_external(models, index, progress=False)
    cols = [c for c in run_answer if c.startswith(("method:", "image_only:", "lesion_crop:", "image+pred_mask:"))]
    own, _ = pipeline.predict_external(models.with_members(None, fusion, temperature), index, progress=False)
    assert np.allclose(own[cols].to_numpy(), run_answer[cols].to_numpy(), atol=1e-6)
    ceiling = "image+gt_mask:p_normal"  # trained for the run's seed only
    assert ceiling not in own and ceiling in run_answer
    hotter, _ = pipeline.predict_external(models.with_members(None, fusion, 2 * temperature), index, progress=False)
    raw = [c for c in cols if c.startswith("method:")]
    assert not np.allclose(hotter[raw].to_numpy(), run_answer[raw].to_numpy(), atol=1e-3)  # the temperature passed
    before = [f"method_raw:p_{c}" for c in CLASSES]
    assert np.allclose(hotter[before].to_numpy(), run_answer[before].to_numpy(), atol=1e-6)  # the same fused answer

    _, p_run = pipeline.variant_probs(run_answer, "method")
    assert not (p_run.argmax(1) == malignant).all()  # negative control: the run itself does not say malignant to all
    seven, _ = pipeline.predict_external(models.with_members(7, fusion, temperature), index, progress=False)
    for variant in ("method", *models.graphs):
        _, p = pipeline.variant_probs(seven, variant)
        assert (p.argmax(1) == malignant).all(), variant
    again, _ = pipeline.predict_external(models, index, progress=False)
    assert np.allclose(again[cols].to_numpy(), run_answer[cols].to_numpy(), atol=1e-6)  # the run's models untouched
    with pytest.raises(RunFolderError, match="seed tag 8"):
        models.with_members(8, fusion, temperature)  # no members saved under that tag


def test_a_cached_synthetic_set_of_an_older_generator_is_rebuilt(tmp_path):
    root = synthetic.make_synthetic_external(tmp_path / "set", layout="bus_uclm")
    (root / ".complete").write_text("ok\n")  # what the first generator wrote
    (root / "masks" / sorted(p.name for p in (root / "masks").iterdir())[0]).write_bytes(b"")
    assert len(external.build_external_index(synthetic.make_synthetic_external(root, layout="bus_uclm"), False)) == 32
