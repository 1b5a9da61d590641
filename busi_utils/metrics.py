"""Segmentation and classification metrics, with the conventions written down.

Empty-mask convention (Dice/IoU per image): if truth and prediction are both empty the
score is 1 (nothing to find, nothing found); if only one is empty it is 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from .config import CLASSES


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
    from scipy.stats import rankdata

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
    return out


def resample_indices(rng: np.random.Generator, n: int, groups: Sequence | None = None) -> np.ndarray:
    """One bootstrap resample of ``n`` cases: images drawn with replacement, or, with ``groups``
    (a patient per image), whole patients drawn with replacement and all their images taken,
    because images of one patient are not independent."""
    if groups is None:
        return rng.integers(0, n, n)
    groups = np.asarray(groups)
    members = pd.Series(np.arange(n)).groupby(groups).apply(np.asarray).tolist()
    picks = rng.integers(0, len(members), len(members))
    return np.concatenate([members[k] for k in picks])


def _percentile_ci(values, alpha: float = 0.05) -> list:
    """``[low, high]`` percentile interval of the finite ``values`` (resamples where a score is
    undefined, e.g. a class drawn zero times, are left out); ``[None, None]`` when none is finite."""
    vals = np.asarray(values, dtype=float)
    vals = vals[np.isfinite(vals)]
    if not len(vals):
        return [None, None]
    return [float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))]


def bootstrap_ci(
    stat: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Sequence | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` cases resampled with
    replacement (images, or whole ``groups`` such as patients). Resamples where ``stat`` is
    ``nan`` are left out; ``(nan, nan)`` if every one is."""
    rng = np.random.default_rng(seed)
    vals = [stat(resample_indices(rng, n, groups)) for _ in range(n_boot)]
    lo, hi = _percentile_ci(vals, alpha)
    return (float("nan"), float("nan")) if lo is None else (lo, hi)


def classification_with_ci(
    labels: Sequence[str],
    probs: np.ndarray,
    keys: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence | None = None,
) -> dict[str, dict]:
    """``{key: {"value", "ci95"}}`` for the chosen headline metrics; every bootstrap resample
    computes all keys at once (percentile intervals; images, or whole ``groups``, as the unit).

    Only the ``keys`` that :func:`classification_metrics` defines on the full sample are returned
    (e.g. no ``benign_malignant_auc`` on a set without malignant images). A resample in which a
    key is undefined (a class drawn zero times) is left out of that key's interval; ``ci95`` is
    ``[None, None]`` in the unlikely case that no resample defines it."""
    labels = np.asarray([str(x) for x in labels])
    probs = np.asarray(probs)
    point = classification_metrics(labels, probs)
    keys = [k for k in keys if k in point]
    rng = np.random.default_rng(seed)
    draws = np.full((n_boot, len(keys)), np.nan)
    for b in range(n_boot):
        idx = resample_indices(rng, len(labels), groups)
        m = classification_metrics(labels[idx], probs[idx])
        draws[b] = [m.get(k, np.nan) for k in keys]
    return {key: {"value": point[key], "ci95": _percentile_ci(draws[:, j])} for j, key in enumerate(keys)}


def paired_bootstrap_diff(
    labels: Sequence[str],
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    keys: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """Difference ``a - b`` of two models scored on the *same* images, with a paired percentile
    bootstrap 95% interval: each resample draws one set of images and scores both models on it,
    so the image-to-image difficulty that both share cancels out. Also ``p_a_better``, the share
    of resamples in which ``a`` is ahead. ``{key: {"value", "ci95", "p_a_better"}}``, for the
    ``keys`` defined on the full sample; resamples where a key is undefined are left out of it
    (as in :func:`classification_with_ci`)."""
    labels = np.asarray([str(x) for x in labels])
    probs_a, probs_b = np.asarray(probs_a), np.asarray(probs_b)

    def diff(idx: np.ndarray, keys: Sequence[str]) -> np.ndarray:
        ma, mb = classification_metrics(labels[idx], probs_a[idx]), classification_metrics(labels[idx], probs_b[idx])
        return np.array([ma[k] - mb[k] if k in ma and k in mb else np.nan for k in keys], dtype=float)

    full = np.arange(len(labels))
    point = diff(full, keys)
    keys = [k for k, v in zip(keys, point) if np.isfinite(v)]
    point = point[np.isfinite(point)]
    rng = np.random.default_rng(seed)
    draws = np.array([diff(rng.integers(0, len(labels), len(labels)), keys) for _ in range(n_boot)]).reshape(
        n_boot, len(keys)
    )
    out = {}
    for j, key in enumerate(keys):
        col = draws[:, j][np.isfinite(draws[:, j])]
        out[key] = {
            "value": float(point[j]),
            "ci95": _percentile_ci(col),
            "p_a_better": float((col > 0).mean()) if len(col) else None,
        }
    return out


def seed_differences(study: pd.DataFrame, a: str, b: str, keys: Sequence[str]) -> pd.DataFrame:
    """Per seed, metric of variant ``a`` minus variant ``b`` (rows of :func:`classification.seed_study`)."""
    wide = study.pivot(index="seed", columns="variant", values=list(keys))
    return pd.DataFrame({k: wide[(k, a)] - wide[(k, b)] for k in keys})


def mask_verdict(paired: dict, per_seed: pd.DataFrame, key: str = "macro_f1", unit: str = "seed") -> str:
    """A plain sentence on whether the method beats image-only on ``key``: shown (paired interval
    above zero and ahead for every seed), ahead but not shown (interval includes zero or a seed
    disagrees), or not ahead."""
    lo, hi = paired[key]["ci95"]
    mean = float(per_seed[key].mean())
    name = key.replace("_", "-")
    if lo > 0 and (per_seed[key] > 0).all():
        return f"The predicted mask helps: the method is ahead on {name} on the test images (interval above zero) and for every {unit}."
    if mean > 0 and paired[key]["value"] > 0:
        return (
            f"The method is ahead on {name} on average, but the paired interval includes zero or a {unit} disagrees: "
            "the mask's benefit is not shown beyond doubt on a test split of this size."
        )
    return f"The predicted mask does not help on {name} here: the method is not ahead of image-only."


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
