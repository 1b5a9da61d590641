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
from .report import KEYS, P, calibration_block, scores_with_ci
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


class RunModels:
    """The run folder's fold-U-Net ensemble and the four classifier variants, as notebooks 02-05 left them."""

    def __init__(self, run_dir: str | Path):
        from . import classification as cls
        from . import segmentation as seg

        self.paths = RunPaths(Path(run_dir).resolve())
        summary = read_json(self.paths.classifier_summary)
        if not self.paths.fold_unet(0).exists() or summary is None:
            raise RunFolderError(f"{self.paths.root}: no trained models (run notebooks 02-04, or `make course`)")
        self.balance = summary["balance"]
        self.unets = seg.load_ensemble(self.paths)
        self.classifiers = {}
        for v in cls.VARIANTS:
            path = cls.classifier_path(self.paths, v, self.balance)
            if not path.exists():
                raise RunFolderError(f"{path}: missing; the run folder is incomplete (run notebook 04)")
            self.classifiers[v] = cls.load_classifier(path)
        self.metrics = read_json(self.paths.metrics_json) or {}
        self.finalised = summary.get("finalised", {})  # temperature, TTA views, entropy cutoff (notebook 04)
        self.seg_size = self.unets[0][1]["recipe"]["size"]
        self.cls_size = self.classifiers["image+pred_mask"][1]["recipe"]["size"]


def predict_external(
    models: RunModels, index: pd.DataFrame, adapt: str = "none", progress: bool = True
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per image: Dice/IoU (images with a mask), and every variant's class probabilities.
    Returns ``(table, predicted lesion probabilities at the U-Net's size)``."""
    from . import classification as cls
    from . import images, preprocess
    from . import segmentation as seg
    from .export import ClassifierGraph, classify_batch
    from .external import load_external_pair

    if adapt not in ADAPTATIONS:
        raise ValueError(f"unknown adaptation {adapt!r}: {', '.join(ADAPTATIONS)}")
    seg_arr = preprocess.resized_arrays(index, models.seg_size, progress=progress, loader=load_external_pair)
    cls_arr = preprocess.resized_arrays(index, models.cls_size, progress=progress, loader=load_external_pair)
    pos = {str(i): k for k, i in enumerate(seg_arr["ids"])}
    order = [pos[i] for i in index["image_id"]]
    seg_images, seg_masks = seg_arr["images"][order], seg_arr["masks"][order]
    cls_arr = {"ids": cls_arr["ids"], "images": cls_arr["images"].copy(), "masks": cls_arr["masks"]}
    if adapt == "histmatch":
        seg_images = histogram_match(seg_images, busi_reference_cdf(models.paths, models.seg_size))
        cls_arr["images"] = histogram_match(cls_arr["images"], busi_reference_cdf(models.paths, models.cls_size))
    probs = seg.predict_ensemble(models.unets, seg_images)
    probs = images.prob_to_uint8(probs).astype(np.float32) / 255.0  # as stored for training
    ids = index["image_id"].tolist()
    table = index[["image_id", "label", "patient"]].copy()
    table["label"] = table["label"].astype(str)
    scores = seg.score_masks(probs, seg_masks)
    table["dice"] = np.where(index["has_mask"] & (index["label"].astype(str) != "normal"), scores["dice"], np.nan)
    table["iou"] = np.where(table["dice"].notna(), scores["iou"], np.nan)
    table["pred_area"] = (probs >= 0.5).mean(axis=(1, 2))
    store = preprocess.ArrayStore(cls_arr)
    pred_masks = dict(zip(ids, probs))
    for v, (model, info) in models.classifiers.items():
        x = cls.build_inputs(v, ids, store, pred_masks, models.cls_size)
        p = cls.predict_proba(model, x, info["stats"])
        if v == "image+gt_mask":
            p[~index["has_mask"].to_numpy()] = np.nan  # no ground truth, no ceiling
        for k, c in enumerate(CLASSES):
            table[f"{v}:p_{c}"] = p[:, k]
        if v == "image+pred_mask":  # the Predictor's view of the method: TTA views, then the temperature
            graph = ClassifierGraph(model, info["stats"], int(models.finalised.get("tta_views", 2)), models.cls_size)
            tta_probs, _ = classify_batch(graph, x)
            for k, c in enumerate(CLASSES):
                table[f"method_tta:p_{c}"] = tta_probs[:, k]
    return table, probs


def variant_probs(table: pd.DataFrame, variant: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows a variant could score (all, or those with a mask for the GT-mask ceiling) and its probabilities."""
    cols = [f"{variant}:{p}" for p in P]
    rows = table[table[cols].notna().all(axis=1)]
    return rows, rows[cols].to_numpy()


def summarise(table: pd.DataFrame, models: RunModels, n_boot: int = 1000, seed: int = 0) -> dict:
    """The report: counts, Dice with a patient-bootstrap interval, and per variant the headline
    metrics with patient-bootstrap intervals; calibration of the method under shift."""
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
        "normal_pred_area_mean": float(table.loc[table["label"] == "normal", "pred_area"].mean()),
        "variants": {},
    }
    for v in models.classifiers:
        rows, p = variant_probs(table, v)
        report["variants"][v] = {"n": int(len(rows)), **scores_with_ci(rows["label"], p, n_boot, seed, rows["patient"])}
    raw = table[[f"method_tta:{c}" for c in P]].to_numpy()
    cal = calibration_block(table["label"], raw, float(models.finalised.get("temperature", 1.0)))
    report["calibration"] = {"temperature_from_busi": cal.pop("temperature"), **cal}
    return report


def method_tta(table: pd.DataFrame, models: RunModels) -> tuple[np.ndarray, np.ndarray]:
    """The method as the Predictor sees it: TTA probabilities with BUSI's temperature, and their
    entropy (what the referral rule compares with BUSI's cutoff)."""
    from .uncertainty import apply_temperature, entropy

    raw = table[[f"method_tta:{c}" for c in P]].to_numpy()
    calibrated = apply_temperature(raw, float(models.finalised.get("temperature", 1.0)))
    return calibrated, entropy(calibrated)


def compare_with_busi(
    report: dict, busi_classification: dict, keys=("accuracy", "macro_f1", "malignant_recall", "auc_ovr")
) -> pd.DataFrame:
    """Rows ``(variant, "BUSI test" | "external")``, columns ``keys``: each variant's score at home
    (notebook 05's ``metrics.json``) and on the external set, side by side."""
    rows = {}
    for v, ext in report["variants"].items():
        if v in busi_classification:
            rows[(v, "BUSI test")] = {k: busi_classification[v][k] for k in keys}
        rows[(v, "external")] = {k: ext[k] for k in keys}
    return pd.DataFrame(rows).T


def metrics_by_flag(
    table: pd.DataFrame, flags: pd.DataFrame, variants=("image_only", "image+pred_mask")
) -> pd.DataFrame:
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


def summary_lines(report: dict) -> list[str]:
    """The report as a short text table (CLI, logs)."""
    lines = [f"{report['n_images']} images, {report['n_patients']} patients, labels {report['labels']}"]
    if report["dice_mean"] is not None:
        lo, hi = report["dice_ci95"]
        lines.append(
            f"segmentation Dice {report['dice_mean']:.3f} ({lo:.2f}-{hi:.2f}) on {report['n_lesion_masks']} lesion images"
        )
    lines.append(f"{'variant':18s} {'n':>4s} " + " ".join(f"{k:>22s}" for k in KEYS))
    for v, r in report["variants"].items():
        lines.append(
            f"{v:18s} {r['n']:4d} "
            + " ".join(f"{r[k]:8.3f} ({r[k + '_ci95'][0]:.2f}-{r[k + '_ci95'][1]:.2f})" for k in KEYS)
        )
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
