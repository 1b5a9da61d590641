"""Segmentation and classification metrics, with the conventions written down.

Empty-mask convention (Dice/IoU per image): if truth and prediction are both empty the
score is 1 (nothing to find, nothing found); if only one is empty it is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from busi_utils.core.config import CLASSES


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks, with the empty-mask convention above."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    if total == 0:
        return 1.0, 1.0
    union = total - inter
    return float(2 * inter / total), float(inter / union)


# --------------------------------------------------------------------------- classification


def _labels_to_idx(labels: Sequence[str]) -> np.ndarray:
    return np.array([CLASSES.index(str(label)) for label in labels], dtype=int)


def _pair_score(probs: np.ndarray, neg: int, pos: int) -> np.ndarray:
    """``P(pos) / (P(neg) + P(pos))``: the two classes' probabilities renormalised (0.5 where both are 0)."""
    num, den = probs[:, pos], probs[:, neg] + probs[:, pos]
    return np.divide(num, den, out=np.full(len(probs), 0.5), where=den > 0)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    """Binary ROC AUC as the Mann-Whitney statistic (ties count a half): the value of sklearn's
    ``roc_auc_score``, without its input checks, which dominate the time of a bootstrap.
    Needs both a positive and a negative case."""
    from scipy.stats import rankdata  # light CLI path: loaded when used

    positive = np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((rankdata(score)[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _per_class(y: np.ndarray, pred: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from class indices, as sklearn's
    ``precision_recall_fscore_support(labels=range(3), zero_division=0)``."""
    n = len(CLASSES)
    tp = np.bincount(y[pred == y], minlength=n).astype(float)
    said = np.bincount(pred, minlength=n)
    return _ratio(tp, said), _ratio(tp, counts), _ratio(2 * tp, said + counts)


def macro_f1_indices(y: np.ndarray, pred: np.ndarray) -> float:
    """:func:`classification_metrics`' macro-F1 (over the classes present in the truth) from
    class indices: NumPy only, for loops that score thousands of resamples."""
    counts = np.bincount(y, minlength=len(CLASSES))
    return float(np.mean(_per_class(y, pred, counts)[2][counts > 0]))


def classification_metrics(labels: Sequence[str], probs: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1, per-class precision/recall/F1, malignant sensitivity and
    specificity (malignant vs the rest), ROC AUC, and two lesion scores.

    Only what the sample defines is returned; an undefined score is **left out**, never
    ``nan`` or a made-up 0 (external sets often have no normal images):

    * ``macro_f1`` averages F1 over the classes *present in the truth*: a class absent from
      the truth has no recall to average. With all three present (BUSI) it is the usual macro-F1.
    * ``{c}_precision`` is always there (predictions of ``c`` can exist; 0 when ``c`` is never
      predicted); ``{c}_recall`` and ``{c}_f1`` only when ``c`` is present in the truth.
      ``malignant_recall`` needs malignant images, ``malignant_specificity`` non-malignant ones.
    * ``auc_ovr``: one-vs-rest macro ROC AUC when all classes are present; with exactly two
      present, the AUC of those two, scored by their renormalised probabilities (on a set
      without normals: benign vs malignant); absent with fewer than two classes.
    * ``benign_malignant_auc``: ROC AUC of malignant vs benign among the images whose truth is
      benign or malignant, scored by ``P(malignant) / (P(benign) + P(malignant))``; needs both.
    * ``lesions_called_normal``: share of the benign + malignant images predicted normal
      (argmax): lesions the classifier would send home; needs lesion images.
    * ``normals_called_lesion``: share of the normal images predicted benign or malignant: the
      false alarms of the question "is there a lesion?"; needs normal images.
    """
    y = _labels_to_idx(labels)
    probs = np.asarray(probs, dtype=float)
    pred = probs.argmax(1)
    counts = np.bincount(y, minlength=len(CLASSES))
    present = [k for k in range(len(CLASSES)) if counts[k]]
    if not present:
        return {}
    p, r, f = _per_class(y, pred, counts)
    out = {"accuracy": float((pred == y).mean()), "macro_f1": float(np.mean(f[present]))}
    for k, c in enumerate(CLASSES):
        out[f"{c}_precision"] = float(p[k])
        if counts[k]:
            out[f"{c}_recall"], out[f"{c}_f1"] = float(r[k]), float(f[k])
    mal, ben, nor = (CLASSES.index(c) for c in ("malignant", "benign", "normal"))
    is_mal, said_mal = y == mal, pred == mal
    if (~is_mal).any():
        out["malignant_specificity"] = float((~said_mal & ~is_mal).sum() / (~is_mal).sum())
    if len(present) > 2:  # sklearn's multi_class="ovr", average="macro", without its sum-to-1 check
        out["auc_ovr"] = float(np.mean([_auc(y == k, probs[:, k]) for k in present]))
    elif len(present) == 2:
        neg, pos = present
        out["auc_ovr"] = _auc(y == pos, _pair_score(probs, neg, pos))
    if counts[ben] and counts[mal]:
        lesion = (y == ben) | is_mal
        out["benign_malignant_auc"] = _auc(is_mal[lesion], _pair_score(probs[lesion], ben, mal))
    lesion = y != nor
    if lesion.any():
        out["lesions_called_normal"] = float((pred[lesion] == nor).mean())
    if (~lesion).any():
        out["normals_called_lesion"] = float((pred[~lesion] != nor).mean())
    return out


# --------------------------------------------------------------------------- calibration


def expected_calibration_error(labels: Sequence[str], probs: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the top-class confidence: the average gap between confidence and accuracy,
    weighted by how many cases fall in each confidence bin."""
    y = _labels_to_idx(labels)
    conf, pred = probs.max(1), probs.argmax(1)
    bins = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ece += sel.mean() * abs((pred[sel] == y[sel]).mean() - conf[sel].mean())
    return float(ece)


def reliability_curve(labels: Sequence[str], probs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    y = _labels_to_idx(labels)
    conf, pred = probs.max(1), probs.argmax(1)
    bins = np.linspace(0, 1, n_bins + 1)
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            rows.append(
                {"confidence": conf[sel].mean(), "accuracy": (pred[sel] == y[sel]).mean(), "count": int(sel.sum())}
            )
    return pd.DataFrame(rows)


def referral_curve(labels: Sequence[str], probs: np.ndarray, uncertainty: np.ndarray) -> pd.DataFrame:
    """Accuracy on the cases kept when the most uncertain fraction is referred to a human."""
    y = _labels_to_idx(labels)
    order = np.argsort(uncertainty)  # most certain first
    correct = (probs.argmax(1) == y)[order]
    n = len(y)
    rows = []
    for frac in np.linspace(0, 0.5, 11):
        keep = max(1, int(round(n * (1 - frac))))
        rows.append({"referred": frac, "accuracy": float(correct[:keep].mean())})
    return pd.DataFrame(rows)


def referral_catch(
    labels: Sequence[str], probs: np.ndarray, uncertainty: np.ndarray, cutoff: float
) -> dict[str, float]:
    """What a fixed referral rule (refer when ``uncertainty > cutoff``) does: the share referred,
    accuracy on the kept and the referred cases, and the share of all errors it sends to a human."""
    y = _labels_to_idx(labels)
    wrong = np.asarray(probs).argmax(1) != y
    referred = np.asarray(uncertainty) > cutoff
    return {
        "cutoff": float(cutoff),
        "referred_fraction": float(referred.mean()),
        "accuracy_kept": float(1 - wrong[~referred].mean()) if (~referred).any() else float("nan"),
        "accuracy_referred": float(1 - wrong[referred].mean()) if referred.any() else float("nan"),
        "errors_caught": float(wrong[referred].sum() / max(wrong.sum(), 1)),
    }
