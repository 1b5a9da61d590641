"""The trained pipeline of a run folder, unchanged, on a labelled external set.

    python -m busi_utils.evaluation.evaluate --data PATH [--run runs/cpu] [--out report.json] [--adapt histmatch]

``PATH`` is a folder or zip in either layout of :mod:`busi_utils.data.external`. Prints a summary
table and writes the JSON report atomically, with the per-image table beside it
(``report_images.csv``: each scan's true label, every variant's answer and probabilities, the
lesion confidence, Dice, and the uncertain / out-of-distribution flags). Every interval resamples
**patients**, not images: images of one patient are not independent. The data set and the output
are checked before any model loads. Exit codes: 0 done, 2 unusable data or output (one line
naming the file and the problem), 3 missing or incomplete run folder. Research and teaching only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from busi_utils import DISCLAIMER
from busi_utils.core.config import CLASSES
from busi_utils.core.errors import OutputError, RunFolderError, SiteError
from busi_utils.core.files import atomic_write_json, atomic_write_text, check_writable
from busi_utils.core.runfolder import default_run
from busi_utils.data import BusiDataError
from busi_utils.data.external import build_external_index, resolve_external
from busi_utils.evaluation import metrics
from busi_utils.evaluation.pipeline import (
    ADAPTATIONS,
    METHOD,
    RunModels,
    busi_reference_cdf,
    histogram_match,
    method_answers,
    method_tta,
    predict_external,
    variant_probs,
)
from busi_utils.evaluation.report import KEYS, LESION_KEYS, NORMAL_KEYS, P, calibration_block, scores_with_ci

__all__ = [  # this module's own names, and those it gathers from pipeline (chapter 7 calls them as evaluate.<name>)
    "ADAPTATIONS",
    "busi_reference_cdf",
    "compare_with_busi",
    "histogram_match",
    "main",
    "METHOD",
    "method_answers",
    "method_tta",
    "metrics_by_flag",
    "per_image_table",
    "per_image_path",
    "write_per_image",
    "worst_cases",
    "predict_external",
    "RunModels",
    "summarise",
    "summary_lines",
    "variant_probs",
]


def summarise(table: pd.DataFrame, models: RunModels, n_boot: int = 1000, seed: int = 0) -> dict:
    """The report: counts, Dice with a patient-bootstrap interval, and per variant the headline
    metrics with patient-bootstrap intervals (only those the set defines: see
    :func:`metrics.classification_metrics`; ``benign_malignant_auc`` and ``lesions_called_normal``
    whenever the set has the lesions they need); calibration of the method under shift."""
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


def per_image_table(table: pd.DataFrame, models: RunModels) -> pd.DataFrame:
    """One row per scan, for reading what the pipeline said about each: image, patient, true
    label; each variant's answer and probabilities (blank where it has none, e.g. the ground-truth
    ceiling without a mask); the segmenter's lesion confidence and painted area; Dice and IoU
    (lesion scans with a mask); the method's entropy and the Predictor's two flags, ``uncertain``
    (entropy above BUSI's cutoff: refer) and ``out_of_distribution`` (score above 1)."""
    out = table[[c for c in ("image_id", "rel_path", "patient", "label") if c in table]].rename(
        columns={"rel_path": "image", "label": "true_label"}
    )
    for v in models.variants:
        p = table[[f"{v}:{c}" for c in P]]
        answered = p.notna().all(axis=1).to_numpy()
        out[f"{v}:answer"] = np.where(answered, np.array(CLASSES)[p.fillna(0).to_numpy().argmax(1)], "")
        out[list(p.columns)] = p.round(4)
    out["method:correct"] = out[f"{METHOD}:answer"] == out["true_label"]
    out["lesion_confidence"] = table["conf"].round(4)
    out["pred_area"] = table["pred_area"].round(4)
    out[["dice", "iou"]] = table[["dice", "iou"]].round(4)
    _, ent = method_tta(table, models)
    out["entropy"] = ent.round(4)
    out["uncertain"] = ent > float(models.finalised["entropy_cutoff"])
    if "ood_score" in table:
        out["ood_score"] = table["ood_score"].round(3)
        out["out_of_distribution"] = table["ood_score"] > 1
    return out.reset_index(drop=True)


WORST_COLUMNS = ["image", "true_label", "method:answer", "confidence", "lesion_confidence", "dice", "uncertain",
                 "out_of_distribution"]  # fmt: skip


def worst_cases(per_image: pd.DataFrame, n: int = 6) -> pd.DataFrame:
    """The method's ``n`` most confident mistakes in a :func:`per_image_table` (its index kept, so
    row k is scan k), with their ``confidence``: what chapter 7 shows first."""
    confidence = per_image[[f"{METHOD}:{c}" for c in P]].max(axis=1)
    wrong = per_image.assign(confidence=confidence)[~per_image[f"{METHOD}:correct"].astype(bool)]
    return wrong.nlargest(n, "confidence")


def write_per_image(table: pd.DataFrame, path: Path) -> Path:
    """Write :func:`per_image_table`'s answer as CSV, atomically (never half a table)."""
    atomic_write_text(path, table.to_csv(index=False))
    return Path(path)


def per_image_path(report: Path) -> Path:
    """Where the per-image table of the report ``report`` goes: beside it, ``<stem>_images.csv``."""
    return Path(report).with_name(f"{Path(report).stem}_images.csv")


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
    if report.get("n_masks_resized"):
        lines.append(f"{report['n_masks_resized']} masks of another size than their scan resized to it (nearest)")
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
    keys = KEYS + LESION_KEYS + NORMAL_KEYS
    lines.append(f"{'variant':18s} {'n':>4s} " + " ".join(f"{k:>22s}" for k in keys))
    for v, r in report["variants"].items():
        lines.append(f"{v:18s} {r['n']:4d} " + " ".join(_cell(r, k) for k in keys))
    return lines


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be a positive whole number")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m busi_utils.evaluation.evaluate",
        description="Evaluate a trained run folder on a labelled external set. " + DISCLAIMER,
    )
    ap.add_argument(
        "--data", required=True, help="external set: folder or zip (BUS-UCLM layout, or images/ + labels.csv)"
    )
    ap.add_argument("--run", default=None, help="run folder (default: runs/cpu, else runs/gpu, else runs/quick)")
    ap.add_argument(
        "--out", default=None, help="JSON report path (written atomically; the per-image CSV goes beside it)"
    )
    ap.add_argument(
        "--adapt", default="none", choices=ADAPTATIONS, help="label-free adaptation of the images (default none)"
    )
    ap.add_argument(
        "--resize-masks",
        action="store_true",
        help="resize masks of another size than their scan (nearest; counted in the report); default: refuse them, "
        "except in the BUS-UCLM layout, whose publishers ship 13 such masks",
    )
    ap.add_argument("--bootstrap", type=_positive_int, default=1000, help="patient-bootstrap resamples (default 1000)")
    ap.add_argument("--site", default=None, help="answer as an adapted site of the run (serve.adapt)")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    try:  # everything a user can get wrong is refused here, before a model loads
        if args.out:
            for path in (Path(args.out), per_image_path(Path(args.out))):
                check_writable(path)
        root = resolve_external(args.data)
        index = build_external_index(root, progress=True, resize_masks=args.resize_masks or None)
    except (BusiDataError, OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        models = RunModels(args.run or default_run())
    except RunFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    try:
        models = models.with_site(args.site) if args.site else models
    except SiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    fitted_on = sorted(set(index["patient"].astype(str)) & getattr(models, "site_patients", set()))
    if fitted_on:  # the site was fitted on some of these patients: their scores are no test
        print(f"note: site {args.site} was fitted on {len(fitted_on)} of these patients: no test", file=sys.stderr)
    table, _ = predict_external(models, index, adapt=args.adapt)
    report = {
        "site_fitted_patients": fitted_on,
        "data": str(args.data),
        "run": str(models.paths.root),
        "adapt": args.adapt,
        "site": args.site,
        "n_masks_resized": int(index["mask_resized"].sum()),
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
        images = per_image_path(Path(args.out))
        write_per_image(per_image_table(table, models), images)
        atomic_write_json(Path(args.out), report)
        print(f"report written to {Path(args.out).resolve()}, one row per image in {images.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
