"""Classification metrics on sets where a class is absent (external sets without normal images):
only what the sample defines, no nan, no warnings."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

from busi_utils.core.config import CLASSES
from busi_utils.evaluation import evaluate, metrics
from busi_utils.evaluation.report import KEYS, LESION_KEYS, scores_with_ci

NOR, BEN, MAL = (CLASSES.index(c) for c in ("normal", "benign", "malignant"))


def lesion_set(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Benign and malignant images only, probabilities with signal and some mass on normal."""
    rng = np.random.default_rng(seed)
    y = np.array([BEN, MAL] * (n // 2))
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return np.array(CLASSES)[y], probs


def one_hot(preds) -> np.ndarray:
    return np.array([np.eye(3)[CLASSES.index(p)] for p in preds]) * 0.9 + 0.1 / 3


def no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def test_two_class_set_scores_only_what_it_defines():
    labels, probs = lesion_set()
    m = no_warnings(metrics.classification_metrics, labels, probs)
    assert all(np.isfinite(v) for v in m.values())
    y, pred = np.array([CLASSES.index(c) for c in labels]), probs.argmax(1)
    assert (pred == NOR).any()  # the case that matters: some lesions called normal
    score = probs[:, MAL] / (probs[:, BEN] + probs[:, MAL])
    assert m["benign_malignant_auc"] == pytest.approx(roc_auc_score(y == MAL, score))
    assert m["auc_ovr"] == pytest.approx(m["benign_malignant_auc"])  # the two present classes
    _, _, f, _ = precision_recall_fscore_support(y, pred, labels=[BEN, MAL], zero_division=0)
    assert m["macro_f1"] == pytest.approx(f.mean())
    assert m["lesions_called_normal"] == sum(1 for k in pred if k == NOR) / len(pred)
    assert "normal_precision" in m and "normal_recall" not in m and "normal_f1" not in m
    assert {"benign_recall", "benign_f1", "malignant_recall", "malignant_f1", "malignant_specificity"} <= set(m)


def test_perfect_classifier_without_normals_scores_one():
    labels = ["benign", "malignant", "malignant", "benign", "benign"]
    m = no_warnings(metrics.classification_metrics, labels, one_hot(labels))
    assert m["macro_f1"] == 1.0  # over three classes it would be 2/3
    assert m["benign_malignant_auc"] == m["auc_ovr"] == m["accuracy"] == 1.0
    assert m["lesions_called_normal"] == 0.0


def test_undefined_scores_are_left_out():
    normals = no_warnings(metrics.classification_metrics, ["normal"] * 3, one_hot(["normal", "benign", "normal"]))
    assert normals["accuracy"] == pytest.approx(2 / 3)
    for key in ("auc_ovr", "benign_malignant_auc", "lesions_called_normal", "malignant_recall"):
        assert key not in normals
    benign = no_warnings(metrics.classification_metrics, ["benign"] * 3, one_hot(["benign", "normal", "benign"]))
    assert benign["lesions_called_normal"] == pytest.approx(1 / 3) and "auc_ovr" not in benign
    assert "malignant_recall" not in benign and benign["malignant_specificity"] == 1.0


def test_three_classes_keep_their_old_values():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    probs = rng.dirichlet(np.ones(3), 90)
    probs[np.arange(90), y] += 0.3
    probs /= probs.sum(1, keepdims=True)
    labels = np.array(CLASSES)[y]
    m = no_warnings(metrics.classification_metrics, labels, probs)
    pred = probs.argmax(1)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=range(3), zero_division=0))
    assert m["auc_ovr"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=range(3)))
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=range(3), zero_division=0)
    for k, c in enumerate(CLASSES):
        assert (m[f"{c}_precision"], m[f"{c}_recall"], m[f"{c}_f1"]) == pytest.approx((p[k], r[k], f[k]))
    assert m["malignant_specificity"] == pytest.approx(((pred != MAL) & (y != MAL)).sum() / (y != MAL).sum())
    lesion = y != NOR
    assert m["lesions_called_normal"] == pytest.approx((pred[lesion] == NOR).mean())
    bm = (y == BEN) | (y == MAL)
    score = probs[bm, MAL] / (probs[bm, BEN] + probs[bm, MAL])
    assert m["benign_malignant_auc"] == pytest.approx(roc_auc_score(y[bm] == MAL, score))
    tied = one_hot(np.array(CLASSES)[rng.integers(0, 3, 90)])  # ties everywhere: half credit, as sklearn
    m = no_warnings(metrics.classification_metrics, labels, tied)
    assert m["auc_ovr"] == pytest.approx(roc_auc_score(y, tied, multi_class="ovr", average="macro", labels=range(3)))
    assert m["macro_f1"] == pytest.approx(f1_score(y, tied.argmax(1), average="macro", zero_division=0))


def test_bootstrap_on_a_small_two_class_set_has_finite_intervals():
    labels, probs = lesion_set(12, seed=3)  # small: some resamples miss a class
    keys = KEYS + LESION_KEYS
    ci = no_warnings(metrics.classification_with_ci, labels, probs, keys, n_boot=200, groups=np.arange(12) // 2)
    assert set(ci) == set(keys)
    for key, v in ci.items():
        lo, hi = v["ci95"]
        assert np.isfinite([v["value"], lo, hi]).all() and lo <= hi, key
    paired = no_warnings(metrics.paired_bootstrap_diff, labels, probs, probs[:, ::-1], keys, n_boot=100)
    assert set(paired) == set(keys) and all(np.isfinite(v["ci95"]).all() for v in paired.values())
    only_benign = no_warnings(metrics.classification_with_ci, ["benign"] * 6, one_hot(["benign"] * 6), keys, n_boot=20)
    assert set(only_benign) == {"accuracy", "macro_f1", "malignant_specificity", "lesions_called_normal"}
    lo, hi = no_warnings(metrics.bootstrap_ci, lambda i: np.nan, 5, 10)
    assert np.isnan(lo) and np.isnan(hi)


def no_nan(text: str) -> bool:
    return re.search(r"\bnan\b", text, re.IGNORECASE) is None  # "malignant" contains "nan"


def report_of(labels: np.ndarray, probs: np.ndarray, variants=("image_only", "method")) -> dict:
    """A report as :func:`evaluate.summarise` builds it (counts, Dice, per variant ``n`` and
    :func:`report.scores_with_ci` with patients as the unit), without trained models."""
    return {
        "n_images": len(labels),
        "n_patients": len(labels) // 2,
        "labels": {c: int((labels == c).sum()) for c in CLASSES},
        "n_lesion_masks": len(labels),
        "dice_mean": 0.7,
        "dice_ci95": [0.65, 0.75],
        "variants": {
            v: {"n": len(labels), **scores_with_ci(labels, probs, 50, 0, np.arange(len(labels)) // 2)} for v in variants
        },
    }


def test_report_of_a_set_without_normals_prints_no_nan():
    labels, probs = lesion_set()
    report = no_warnings(report_of, labels, probs)
    for r in report["variants"].values():
        assert {"benign_malignant_auc", "lesions_called_normal", "auc_ovr"} <= set(r)
        assert np.isfinite(r["benign_malignant_auc_ci95"]).all() and np.isfinite(r["lesions_called_normal_ci95"]).all()
    lines = no_warnings(evaluate.summary_lines, report)
    text = "\n".join(lines)
    assert no_nan(text) and " - " not in text  # every score defined on benign + malignant
    assert "benign_malignant_auc" in text and "lesions_called_normal" in text and "no normal images" in text
    row = next(line for line in lines if line.startswith("image_only"))
    assert f"{report['variants']['image_only']['benign_malignant_auc']:.3f}" in row
    assert f"{report['variants']['image_only']['lesions_called_normal']:.3f}" in row


def test_summary_lines_show_a_dash_for_what_a_set_does_not_define():
    labels = np.array(["benign"] * 6)
    report = no_warnings(report_of, labels, one_hot(labels), ("image_only",))
    assert "auc_ovr" not in report["variants"]["image_only"]
    lines = no_warnings(evaluate.summary_lines, report)
    text = "\n".join(lines)
    assert no_nan(text) and "no normal or malignant images" in text
    # lesions called normal, then normals called lesion (no normal scans: a dash); no AUC
    assert lines[-1].split()[-3:] == ["0.000", "(0.00-0.00)", "-"] and " - " in lines[-1]
