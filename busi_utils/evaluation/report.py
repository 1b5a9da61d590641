"""The run's results files, assembled here and checked against :mod:`busi_utils.core.runfolder`'s
schemas before they are written: ``models/classifier_summary.json`` (notebook 04) and
``metrics.json`` (notebook 05, extended by 07 and the course runner).

Each ``*_block`` function turns what a notebook section computed into its entry of
``metrics.json``; the notebook shows the computation, this module owns the file's shape. The
rest assembles what chapter 5 shows a reader (the ablation rows, scores printed with their
intervals), so its cells stay short.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from busi_utils import data
from busi_utils.core import reproducible
from busi_utils.core.config import CLASSES
from busi_utils.core.files import atomic_write_json, read_json
from busi_utils.core.runfolder import CLASSIFIER_SUMMARY_SCHEMA, METRICS_SCHEMA, RunPaths, validate
from busi_utils.evaluation import metrics, uncertainty
from busi_utils.evaluation.bootstrap import ci_text, interval_verdict, score_text  # noqa: F401 (the chapters' names)
from busi_utils.stage2 import classification as cls
from busi_utils.stage2 import crossfit, fusion, shape

KEYS = ["accuracy", "macro_f1", "malignant_recall", "malignant_specificity", "auc_ovr"]
LESION_KEYS = ["benign_malignant_auc", "lesions_called_normal"]  # defined on sets without normals too
NORMAL_KEYS = ["normals_called_lesion"]  # defined where there are normal scans
PAIRED_KEYS = ["accuracy", "macro_f1", "malignant_recall", "auc_ovr"]
P = [f"p_{c}" for c in CLASSES]


def write_classifier_summary(
    paths: RunPaths,
    recipe: Mapping,
    ensemble: Mapping,
    fusion_params: Mapping,
    fusion_comparison: pd.DataFrame,
    validation: pd.DataFrame,
    shape_alone: Mapping | None = None,
) -> dict:
    """Notebook 04's choices: the recipe, the views and members of the method, the fused
    decision (fitted on out-of-fold probabilities) and the out-of-fold scores it was chosen on."""
    previous = read_json(paths.classifier_summary) or {}  # keeps "finalised": its models_sha256 says whose it is
    summary = {
        "balance": recipe.get("balance", "weighted_loss"),
        "recipe": dict(recipe),
        "views": list(ensemble["views"]),
        "members": [int(k) for k in ensemble["members"]],
        "fusion": dict(fusion_params),
        "fusion_comparison": fusion_comparison.reset_index().to_dict("records"),
        "validation": validation.reset_index().to_dict("records"),
        "shape_alone": dict(shape_alone or {}),
    }
    if "finalised" in previous:
        summary["finalised"] = previous["finalised"]
    atomic_write_json(
        paths.classifier_summary, validate(summary, CLASSIFIER_SUMMARY_SCHEMA, str(paths.classifier_summary))
    )
    return summary


def read_classifier_summary(paths: RunPaths) -> dict:
    return validate(read_json(paths.classifier_summary), CLASSIFIER_SUMMARY_SCHEMA, str(paths.classifier_summary))


def segmentation_block(lesion: pd.DataFrame, normal_fp_area: np.ndarray, n_boot: int, seed: int) -> dict:
    """Test Dice/IoU of the lesion images (columns dice, iou, label) with a bootstrap interval,
    and the false-positive area on normal images."""
    d = lesion["dice"].to_numpy()
    return {
        "dice_mean": float(d.mean()),
        "dice_ci95": list(metrics.bootstrap_ci(lambda idx: d[idx].mean(), len(d), n_boot, seed)),
        "iou_mean": float(lesion["iou"].mean()),
        "dice_by_class": lesion.groupby("label")["dice"].mean().to_dict(),
        "n_lesion_images": int(len(lesion)),
        "normal_fp_area_mean": float(normal_fp_area.mean()) if len(normal_fp_area) else None,
    }


def scores_with_ci(labels: Sequence[str], probs: np.ndarray, n_boot: int, seed: int, groups=None) -> dict:
    """The headline metrics (:data:`KEYS`, then :data:`LESION_KEYS`) and their bootstrap 95% intervals,
    flat (``{k: value, k_ci95: [lo, hi]}``); ``groups`` resamples patients instead of images. BUSI test
    (05) and external sets (07) alike. A key the sample does not define (e.g. ``benign_malignant_auc``
    without malignant images) is left out, as in :func:`metrics.classification_metrics`."""
    m = metrics.classification_with_ci(
        labels, probs, KEYS + LESION_KEYS + NORMAL_KEYS, n_boot=n_boot, seed=seed, groups=groups
    )
    return {**{k: m[k]["value"] for k in m}, **{f"{k}_ci95": m[k]["ci95"] for k in m}}


def classification_block(test_probs: Mapping[str, pd.DataFrame], n_boot: int, seed: int) -> tuple[dict, pd.DataFrame]:
    """Per variant: headline metrics with bootstrap intervals and per-class scores; and the
    table a reader sees ("value (low-high)"; only the scores the test split defines)."""
    block, rows = {}, []
    for v, df in test_probs.items():
        scores = scores_with_ci(df["label"], df[P].to_numpy(), n_boot, seed)
        full = metrics.classification_metrics(df["label"], df[P].to_numpy())
        skip = KEYS + LESION_KEYS + NORMAL_KEYS
        per_class = {k: full[k] for k in full if k.split("_")[0] in CLASSES and k not in skip}
        block[v] = {**scores, "per_class": per_class}
        rows.append({"variant": v, **{k: ci_text(scores[k], scores[k + "_ci95"]) for k in skip if k in scores}})
    return block, pd.DataFrame(rows).set_index("variant")


def variant_test_probs(
    paths: RunPaths, vd: cls.VariantData, index: pd.DataFrame, table: pd.DataFrame, head: Mapping, summary: Mapping
) -> dict[str, pd.DataFrame]:
    """Chapter 5's rows, as probability frames on the test split (``table``: :func:`crossfit.test_table`):
    ``head`` (the method and each view's ensemble, already computed in the chapter), then the
    ablations a reader compares them with: shape alone (the predicted mask's descriptors in a
    logistic regression), one whole-scan member (fold 0) and the leaky ground-truth-mask ceiling."""
    ids = table["image_id"]
    aspect = data.aspect_ratios(index)
    shapes = shape.shape_matrix([vd.pred_masks[i] for i in ids], [aspect[i] for i in ids])
    saved = lambda stem: cls.read_probs_file(paths.probabilities(stem, "test")).set_index("image_id").loc[ids, P]
    rows = {
        **head,
        "shape_alone": fusion.predict_shape_alone(summary["shape_alone"], shapes),
        "image+pred_mask (one member)": saved(crossfit.member_stem(fusion.SCAN_VIEW, 0)).to_numpy(),
        "image+gt_mask": saved(crossfit.member_stem("image+gt_mask", 0)).to_numpy(),
    }
    return {name: cls.probs_frame(ids, table["label"], probs) for name, probs in rows.items()}


def accuracy_line(correct: np.ndarray, n_boot: int, seed: int) -> str:
    """The share of ``correct`` with its bootstrap interval and count (:func:`ci_text` ``on N cases``),
    so a comparison of two groups of cases (clear vs referred) reads with its noise."""
    correct = np.asarray(correct, dtype=float)
    if not len(correct):
        return "no cases"
    interval = metrics.bootstrap_ci(lambda idx: correct[idx].mean(), len(correct), n_boot, seed)
    return f"{ci_text(correct.mean(), interval)} on {len(correct)} cases"


def referral_verdict(finalised: Mapping, correct: np.ndarray, clear: np.ndarray, n_boot: int, seed: int) -> str:
    """What the referral rule did, worded from the numbers so no prose has to guess: whether the
    cutoff reached its out-of-fold target (else it kept the clearest ``clear_share``, see
    :func:`uncertainty.earned_cutoff`), the share referred, and whether the clear answers' interval
    lies above the referred ones' (fewer than 20 clear cases: too few for an interval to mean much)."""
    target, share = finalised["cutoff_target"], finalised["clear_share"]
    if finalised["cutoff_accuracy"] >= target:
        rule = f"out of fold the clear answers reached the {target:.0%} target"
    else:
        rule = f"out of fold no cutoff reached the {target:.0%} target, so the cutoff keeps the clearest {share:.0%}"
    correct, clear = np.asarray(correct, dtype=float), np.asarray(clear, dtype=bool)
    referred = f"{1 - clear.mean():.0%} of these cases referred"
    if min(clear.sum(), (~clear).sum()) < 20:
        return f"{rule}; {referred}: too few cases on one side to compare: referral here is a safety net, not a filter"
    ci = [
        metrics.bootstrap_ci(lambda i, c=c: c[i].mean(), len(c), n_boot, seed)
        for c in (correct[clear], correct[~clear])
    ]
    if ci[0][0] > ci[1][1]:
        return f"{rule}; {referred}: the clear answers' interval lies above the referred ones': referral filtered"
    return f"{rule}; {referred}: the clear answers were not shown more accurate: a safety net, not a filter"


def gt_mask_table(classification: Mapping, gt_on_predicted: Mapping) -> pd.DataFrame:
    """Test accuracy, with its interval, of the ground-truth-mask model fed hand-drawn masks and fed
    the U-Net's, beside the method's (``scores_with_ci`` entries): section 7's leak in one table."""
    rows = {
        "image+gt_mask model, fed ground-truth masks (leaky ceiling)": classification["image+gt_mask"],
        "image+gt_mask model, fed predicted masks (what deployment gets)": gt_on_predicted,
        "the method: trained and tested on predicted masks": classification["method"],
    }
    return pd.DataFrame(
        {"test accuracy (95% interval)": {k: ci_text(v["accuracy"], v["accuracy_ci95"]) for k, v in rows.items()}}
    )


def mask_worth_block(paired: dict, per_seed: pd.DataFrame, verdict: str) -> dict:
    """The paired bootstrap on one run and the seed study's spread (notebook 05, section 3)."""
    n = len(per_seed)
    return {
        "paired": paired,
        "per_seed": per_seed.reset_index().to_dict("records"),
        "verdict": verdict,
        "seeds": {
            "seeds": per_seed.index.tolist(),
            "n_seeds": n,
            **{f"{k}_diff_mean": float(per_seed[k].mean()) for k in PAIRED_KEYS},
            **{f"{k}_diff_std": float(per_seed[k].std(ddof=1)) if n > 1 else 0.0 for k in PAIRED_KEYS},
        },
    }


def calibration_block(labels: Sequence[str], raw: np.ndarray, temperature: float) -> dict:
    """ECE of the test probabilities before and after the temperature fitted on validation."""
    return {
        "temperature": float(temperature),
        "ece_before": metrics.expected_calibration_error(labels, raw),
        "ece_after": metrics.expected_calibration_error(labels, uncertainty.apply_temperature(raw, temperature)),
    }


def uncertainty_block(
    labels: Sequence[str], calibrated_tta: np.ndarray, entropy: np.ndarray, finalised: Mapping
) -> dict:
    """The referral rule fixed on validation (notebook 04), applied once to the test split."""
    catch = metrics.referral_catch(labels, calibrated_tta, entropy, finalised["entropy_cutoff"])
    return {
        "tta_views": int(finalised["tta_views"]),
        "entropy_cutoff": catch.pop("cutoff"),
        "accuracy_tta": metrics.classification_metrics(labels, calibrated_tta)["accuracy"],
        **catch,
    }


def ood_block(score: np.ndarray, finalised: Mapping) -> dict:
    """Share of test scans the out-of-distribution check flags (score above 1: each a false alarm)."""
    return {
        "quantile": float(finalised["ood_quantile"]),
        "thresholds": dict(finalised["ood_thresholds"]),
        "flagged_test_fraction": float((score > 1).mean()),
        "score_median": float(np.median(score)),
    }


def leakage_block(
    random_split: Mapping, image_only: Mapping, gt_mask: Mapping, gt_on_predicted_accuracy: float, method: Mapping
) -> dict:
    """Section 7's three leaks in numbers."""
    rs = random_split
    return {
        "random_split": {
            "accuracy": rs["test"]["accuracy"],
            "macro_f1": rs["test"]["macro_f1"],
            "n_test": rs["n_test"],
            "test_with_copy_in_train": rs["test_with_copy_in_train"],
        },
        "grouped_split": {"accuracy": image_only["accuracy"], "macro_f1": image_only["macro_f1"]},
        "gt_mask_model": {"with_gt_masks": gt_mask["accuracy"], "with_predicted_masks": gt_on_predicted_accuracy},
        "method_with_predicted_masks": method["accuracy"],
    }


def read_timing(paths: RunPaths) -> dict:
    """``{"notebooks": {stem: seconds}, "resumed": [...]}`` (older flat files are read as notebooks)."""
    timing = read_json(paths.timing_json, {})
    if "notebooks" not in timing:
        timing = {"notebooks": timing, "resumed": []}
    timing.setdefault("resumed", [])
    return timing


def timing_block(paths: RunPaths) -> dict:
    """Per notebook, the seconds of the run that computed its results, and their sum."""
    timing = read_timing(paths)["notebooks"]
    return {"notebooks": timing, "course_seconds": round(sum(timing.values()), 1)}


def write_metrics(paths: RunPaths, results: dict) -> dict:
    """Validate ``results`` against :data:`~busi_utils.core.runfolder.METRICS_SCHEMA` and write
    ``metrics.json`` atomically, keeping entries other notebooks added (``external``). It records
    the machine beside the numbers (CPU, instruction set, threads, versions, reproducible mode)."""
    current = read_json(paths.metrics_json, {})
    merged = {**{k: v for k, v in current.items() if k not in results}, **results, "timing": timing_block(paths)}
    merged["machine"] = reproducible.describe()
    atomic_write_json(paths.metrics_json, validate(merged, METRICS_SCHEMA, str(paths.metrics_json)))
    return merged


def add_to_metrics(paths: RunPaths, key: str, entry: Mapping) -> dict:
    """Add ``metrics.json["external"][key]`` (notebook 07), keeping the rest."""
    current = read_json(paths.metrics_json, {})
    current.setdefault("external", {})[key] = dict(entry)
    atomic_write_json(paths.metrics_json, current)
    return current
