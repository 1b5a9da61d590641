"""The trained pipeline of a run folder, unchanged, on a labelled external set.

    python -m busi_utils.evaluate --data PATH [--run runs/cpu] [--out report.json] [--adapt histmatch]

``PATH`` is a folder or zip in either layout of :mod:`busi_utils.external`. Prints a summary
table and writes the JSON report atomically. Every interval resamples **patients**, not images:
images of one patient are not independent. Exit codes: 0 done, 2 unusable data (one-line error
naming the file), 3 missing or incomplete run folder. Research and teaching only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import DISCLAIMER
from .config import CLASSES
from .errors import RunFolderError
from .files import atomic_write_json, read_json
from .report import KEYS, LESION_KEYS, P, calibration_block, scores_with_ci
from .runfolder import RunPaths

ADAPTATIONS = ("none", "histmatch")


def _intensity_cdf(images: np.ndarray) -> np.ndarray:
    hist = np.bincount(np.asarray(images, dtype=np.uint8).ravel(), minlength=256).astype(float)
    return np.cumsum(hist) / hist.sum()


def histogram_match(images: np.ndarray, reference_cdf: np.ndarray) -> np.ndarray:
    """Map each image's gray levels so that its histogram matches ``reference_cdf`` (the
    training scans' pooled histogram): a label-free adaptation to another scanner's gain."""
    out = np.empty_like(images)
    levels = np.arange(256)
    for k, img in enumerate(images):
        cdf = _intensity_cdf(img)
        out[k] = (
            np.interp(np.interp(img.ravel(), levels, cdf), reference_cdf, levels)
            .reshape(img.shape)
            .round()
            .astype(np.uint8)
        )
    return out


def busi_reference_cdf(paths: RunPaths, size: int) -> np.ndarray:
    """The pooled gray-level CDF of the run's training-pool scans (never test images)."""
    from . import data, preprocess

    index = data.read_index(paths.index_csv)
    split = paths.read_split()
    store = preprocess.ArrayStore(preprocess.resized_arrays(index, size, progress=False))
    train = split.loc[split["split"] == "train", "image_id"]
    return _intensity_cdf(np.stack([store.image(i) for i in train]))


METHOD = "method"  # the Predictor's answer: both views' ensembles fused, calibrated


class RunModels:
    """The run folder's models as notebooks 02-05 left them: the fold-U-Net ensemble, each
    view's member ensemble as inference graphs (the Predictor's), the image-only ensemble, the
    shape-alone model and, when notebook 05 trained it, the leaky ground-truth-mask ceiling."""

    def __init__(self, run_dir: str | Path):
        from . import classification as cls
        from . import crossfit
        from .export import load_graphs, view_graph

        self.paths = RunPaths(Path(run_dir).resolve())
        summary = read_json(self.paths.classifier_summary)
        if not self.paths.fold_unet(0).exists() or summary is None or "finalised" not in summary:
            raise RunFolderError(f"{self.paths.root}: no trained models (run notebooks 02-04, or `make course`)")
        self.summary, self.finalised, self.balance = summary, summary["finalised"], summary["balance"]
        self.seg_graph, self.graphs, _ = load_graphs(self.paths)
        members = summary["members"]
        for k in members:
            if not crossfit.member_path(self.paths, "image_only", k).exists():
                raise RunFolderError(f"{crossfit.member_path(self.paths, 'image_only', k)}: missing (run notebook 04)")
        self.graphs["image_only"] = view_graph(crossfit.load_members(self.paths, "image_only", members), 2)
        gt = crossfit.member_path(self.paths, "image+gt_mask", 0)
        self.gt_model = cls.load_classifier(gt) if gt.exists() else None
        self.metrics = read_json(self.paths.metrics_json) or {}
        self.seg_size = self.seg_graph.size
        self.cls_size = self.graphs["image+pred_mask"].size

    @property
    def variants(self) -> list[str]:
        """The rows of an evaluation: the method first, then its parts and the ablations."""
        return [METHOD, *self.graphs, "shape_alone", *(["image+gt_mask"] if self.gt_model else [])]


def method_answers(models: RunModels, view_probs: dict, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fused before the temperature, fused and calibrated)``: the Predictor's computation."""
    from . import fusion

    raw = fusion.fuse(models.summary["fusion"], view_probs[fusion.SCAN_VIEW], view_probs[fusion.CROP_VIEW], conf)
    return raw, fusion.decide(models.summary["fusion"], view_probs, conf, float(models.finalised["temperature"]))


def predict_external(
    models: RunModels, index: pd.DataFrame, adapt: str = "none", progress: bool = True
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per image: Dice/IoU (images with a mask), the method's answer as the Predictor computes it
    (``method:p_*``, and ``method_raw:p_*`` before the temperature) and every other variant's
    class probabilities. Returns ``(table, predicted lesion probabilities at the U-Net's size)``."""
    import torch

    from . import classification as cls
    from . import fusion, images, preprocess, shape
    from .export import classify_batch
    from .external import load_external_pair

    if adapt not in ADAPTATIONS:
        raise ValueError(f"unknown adaptation {adapt!r}: {', '.join(ADAPTATIONS)}")
    size = models.cls_size
    arrays = {
        s: preprocess.resized_arrays(index, s, progress=progress, loader=load_external_pair)
        for s in {models.seg_size, size, cls.crop_source_size(size)}
    }
    ids = index["image_id"].tolist()
    stores = {}
    for s, arr in arrays.items():
        pos = {str(i): k for k, i in enumerate(arr["ids"])}
        order = [pos[i] for i in ids]
        imgs = arr["images"][order]
        if adapt == "histmatch":
            imgs = histogram_match(imgs, busi_reference_cdf(models.paths, s))
        stores[s] = preprocess.ArrayStore({"ids": np.array(ids), "images": imgs, "masks": arr["masks"][order]})
    seg_images = stores[models.seg_size].images
    with torch.no_grad():
        probs = np.concatenate(
            [models.seg_graph(torch.from_numpy(seg_images[k : k + 32, None] / np.float32(255))).numpy()[:, 0]
             for k in range(0, len(seg_images), 32)]
        )  # fmt: skip
    probs = images.prob_to_uint8(probs).astype(np.float32) / 255.0  # as stored for training
    table = index[["image_id", "label", "patient"]].copy()
    table["label"] = table["label"].astype(str)
    seg_masks = stores[models.seg_size].masks
    from .segmentation import score_masks

    scores = score_masks(probs, seg_masks)
    table["dice"] = np.where(index["has_mask"] & (index["label"].astype(str) != "normal"), scores["dice"], np.nan)
    table["iou"] = np.where(table["dice"].notna(), scores["iou"], np.nan)
    table["pred_area"] = (probs >= 0.5).mean(axis=(1, 2))
    pred_masks = dict(zip(ids, probs))
    store, crops = stores[size], stores[cls.crop_source_size(size)]
    view_probs = {}
    for view, graph in models.graphs.items():
        x = cls.build_inputs(view, ids, store, pred_masks, size, crops)
        view_probs[view], _ = classify_batch(graph, x)
    conf = probs.max(axis=(1, 2))
    aspect = (index["height"] / index["width"]).to_numpy() if "height" in index else None
    features = shape.shape_matrix(list(probs), aspect)
    view_probs["shape_alone"] = fusion.predict_shape_alone(models.summary["shape_alone"], features)
    raw, view_probs[METHOD] = method_answers(models, view_probs, conf)
    view_probs["method_raw"] = raw
    if models.gt_model is not None:
        model, info = models.gt_model
        p = cls.predict_tta(model, cls.build_inputs("image+gt_mask", ids, store, None, size), info["stats"])
        p[~index["has_mask"].to_numpy()] = np.nan  # no ground truth, no ceiling
        view_probs["image+gt_mask"] = p
    for v, p in view_probs.items():
        for k, c in enumerate(CLASSES):
            table[f"{v}:p_{c}"] = p[:, k]
    table["conf"] = conf
    return table, probs


def variant_probs(table: pd.DataFrame, variant: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows a variant could score (all, or those with a mask for the GT-mask ceiling) and its probabilities."""
    cols = [f"{variant}:{p}" for p in P]
    rows = table[table[cols].notna().all(axis=1)]
    return rows, rows[cols].to_numpy()


def summarise(table: pd.DataFrame, models: RunModels, n_boot: int = 1000, seed: int = 0) -> dict:
    """The report: counts, Dice with a patient-bootstrap interval, and per variant the headline
    metrics with patient-bootstrap intervals (only those the set defines: see
    :func:`metrics.classification_metrics`; ``benign_malignant_auc`` and ``lesions_called_normal``
    whenever the set has the lesions they need); calibration of the method under shift."""
    from . import metrics

    lesion = table[table["dice"].notna()].reset_index(drop=True)
    d = lesion["dice"].to_numpy()
    report = {
        "n_images": int(len(table)),
        "n_patients": int(table["patient"].nunique()),
        "labels": table["label"].value_counts().reindex(CLASSES, fill_value=0).astype(int).to_dict(),
        "n_lesion_masks": int(len(lesion)),
        "dice_mean": float(d.mean()) if len(d) else None,
        "dice_ci95": list(metrics.bootstrap_ci(lambda i: d[i].mean(), len(d), n_boot, seed, groups=lesion["patient"]))
        if len(d)
        else None,
        "iou_mean": float(lesion["iou"].mean()) if len(d) else None,
        "normal_pred_area_mean": float(table.loc[table["label"] == "normal", "pred_area"].mean())
        if (table["label"] == "normal").any()
        else None,  # no normal images: undefined
        "variants": {},
    }
    for v in models.variants:
        rows, p = variant_probs(table, v)
        report["variants"][v] = {"n": int(len(rows)), **scores_with_ci(rows["label"], p, n_boot, seed, rows["patient"])}
    raw = table[[f"method_raw:{c}" for c in P]].to_numpy()
    cal = calibration_block(table["label"], raw, float(models.finalised.get("temperature", 1.0)))
    report["calibration"] = {"temperature_from_busi": cal.pop("temperature"), **cal}
    return report


def method_tta(table: pd.DataFrame, models: RunModels) -> tuple[np.ndarray, np.ndarray]:
    """The method as the Predictor answers: fused, calibrated probabilities, and their entropy
    (what the referral rule compares with BUSI's cutoff)."""
    from .uncertainty import entropy

    calibrated = table[[f"{METHOD}:{c}" for c in P]].to_numpy()
    return calibrated, entropy(calibrated)


def compare_with_busi(
    report: dict, busi_classification: dict, keys=("accuracy", "macro_f1", "malignant_recall", "auc_ovr")
) -> pd.DataFrame:
    """Rows ``(variant, "BUSI test" | "external")``, columns ``keys``: each variant's score at home
    (notebook 05's ``metrics.json``) and on the external set, side by side. A score one side does
    not define (e.g. ``benign_malignant_auc`` in an older ``metrics.json``) is NaN there. Without
    normal images, the external ``macro_f1`` and ``auc_ovr`` cover benign and malignant only, so
    they are not BUSI's three-class scores: compare ``benign_malignant_auc`` instead."""
    rows = {}
    for v, ext in report["variants"].items():
        if v in busi_classification:
            rows[(v, "BUSI test")] = {k: busi_classification[v].get(k, np.nan) for k in keys}
        rows[(v, "external")] = {k: ext.get(k, np.nan) for k in keys}
    return pd.DataFrame(rows).T


def metrics_by_flag(table: pd.DataFrame, flags: pd.DataFrame, variants=(METHOD, "image_only")) -> pd.DataFrame:
    """Accuracy and macro-F1 of ``variants`` on the images with and without each boolean flag
    (columns of ``flags``, aligned with ``table``; e.g. BUS-UCLM's ``marks`` and ``doppler``)."""
    from . import metrics

    out = []
    for flag in flags.columns:
        for value, part in table.assign(_flag=flags[flag].to_numpy()).groupby("_flag"):
            for v in variants:
                rows, p = variant_probs(part, v)
                m = metrics.classification_metrics(rows["label"], p)
                out.append(
                    {
                        "flag": flag,
                        "value": bool(value),
                        "variant": v,
                        "n": len(rows),
                        "accuracy": m["accuracy"],
                        "macro_f1": m["macro_f1"],
                    }
                )
    return pd.DataFrame(out)


def _cell(r: dict, k: str) -> str:
    """``value (low-high)``, the value alone without an interval, blank when the set does not define it."""
    value, ci = r.get(k), r.get(f"{k}_ci95") or [None, None]
    if value is None or not np.isfinite(value):
        return f"{'-':>22s}"
    text = f"{value:8.3f}" + ("" if None in ci or not np.all(np.isfinite(ci)) else f" ({ci[0]:.2f}-{ci[1]:.2f})")
    return f"{text:>22s}"


def summary_lines(report: dict) -> list[str]:
    """The report as a short text table (CLI, logs); a score the set does not define shows as ``-``."""
    labels = report["labels"]
    lines = [f"{report['n_images']} images, {report['n_patients']} patients, labels {labels}"]
    absent = [c for c in CLASSES if not labels.get(c)]
    if absent:
        lines.append(
            f"no {' or '.join(absent)} images: macro-F1 and AUC cover "
            f"{' and '.join(c for c in CLASSES if c not in absent)} only (not comparable with BUSI's three-class scores)"
        )
    if report["dice_mean"] is not None:
        lo, hi = report["dice_ci95"]
        lines.append(
            f"segmentation Dice {report['dice_mean']:.3f} ({lo:.2f}-{hi:.2f}) on {report['n_lesion_masks']} lesion images"
        )
    keys = KEYS + LESION_KEYS
    lines.append(f"{'variant':18s} {'n':>4s} " + " ".join(f"{k:>22s}" for k in keys))
    for v, r in report["variants"].items():
        lines.append(f"{v:18s} {r['n']:4d} " + " ".join(_cell(r, k) for k in keys))
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m busi_utils.evaluate",
        description="Evaluate a trained run folder on a labelled external set. " + DISCLAIMER,
    )
    ap.add_argument(
        "--data", required=True, help="external set: folder or zip (BUS-UCLM layout, or images/ + labels.csv)"
    )
    ap.add_argument("--run", default=None, help="run folder (default: runs/cpu, else runs/gpu, else runs/quick)")
    ap.add_argument("--out", default=None, help="JSON report path (written atomically)")
    ap.add_argument(
        "--adapt", default="none", choices=ADAPTATIONS, help="label-free adaptation of the images (default none)"
    )
    ap.add_argument("--bootstrap", type=int, default=1000, help="patient-bootstrap resamples (default 1000)")
    args = ap.parse_args(argv)
    import time
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")
    from .data import BusiDataError
    from .external import build_external_index, resolve_external
    from .runfolder import default_run

    start = time.perf_counter()
    try:
        root = resolve_external(args.data)
        index = build_external_index(root, progress=True)
    except BusiDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        models = RunModels(args.run or default_run())
    except RunFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    table, _ = predict_external(models, index, adapt=args.adapt)
    report = {
        "data": str(args.data),
        "run": str(models.paths.root),
        "adapt": args.adapt,
        **summarise(table, models, args.bootstrap),
    }
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["seconds_per_image"] = round(report["seconds"] / max(len(table), 1), 4)
    print("\n".join(summary_lines(report)))
    print(
        f"{report['seconds']:.0f} s ({report['seconds_per_image'] * 1000:.0f} ms per image) | {DISCLAIMER}",
        file=sys.stderr,
    )
    if args.out:
        atomic_write_json(Path(args.out), report)
        print(f"report written to {Path(args.out).resolve()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
