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
    return np.array([CLASSES.index(str(label)) for label in labels])


def classification_metrics(labels: Sequence[str], probs: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1, per-class precision/recall/F1, malignant sensitivity and
    specificity (malignant vs the rest), one-vs-rest macro ROC AUC."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support, roc_auc_score

    y = _labels_to_idx(labels)
    pred = np.asarray(probs).argmax(1)
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=range(len(CLASSES)), zero_division=0)),
    }
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=range(len(CLASSES)), zero_division=0)
    for k, c in enumerate(CLASSES):
        out[f"{c}_precision"], out[f"{c}_recall"], out[f"{c}_f1"] = float(p[k]), float(r[k]), float(f[k])
    mal = CLASSES.index("malignant")
    is_mal, said_mal = y == mal, pred == mal
    out["malignant_recall"] = float((said_mal & is_mal).sum() / max(is_mal.sum(), 1))
    out["malignant_specificity"] = float((~said_mal & ~is_mal).sum() / max((~is_mal).sum(), 1))
    try:
        out["auc_ovr"] = float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=range(len(CLASSES))))
    except ValueError:  # a class missing from this sample
        out["auc_ovr"] = float("nan")
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


def bootstrap_ci(
    stat: Callable[[np.ndarray], float],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    groups: Sequence | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(indices)`` over ``n`` cases resampled with
    replacement (images, or whole ``groups`` such as patients)."""
    rng = np.random.default_rng(seed)
    vals = np.array([stat(resample_indices(rng, n, groups)) for _ in range(n_boot)], dtype=float)
    vals = vals[~np.isnan(vals)]
    return float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))


def classification_with_ci(
    labels: Sequence[str],
    probs: np.ndarray,
    keys: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    groups: Sequence | None = None,
) -> dict[str, dict]:
    """``{key: {"value", "ci95"}}`` for the chosen headline metrics; every bootstrap resample
    computes all keys at once (percentile intervals; images, or whole ``groups``, as the unit)."""
    labels = np.asarray([str(x) for x in labels])
    probs = np.asarray(probs)
    point = classification_metrics(labels, probs)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = resample_indices(rng, len(labels), groups)
        m = classification_metrics(labels[idx], probs[idx])
        draws.append([m[k] for k in keys])
    draws = np.array(draws, dtype=float)
    out = {}
    for j, key in enumerate(keys):
        col = draws[:, j][~np.isnan(draws[:, j])]
        out[key] = {
            "value": point[key],
            "ci95": [float(np.quantile(col, 0.025)), float(np.quantile(col, 0.975))]
            if len(col)
            else [float("nan")] * 2,
        }
    return out


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
    of resamples in which ``a`` is ahead. ``{key: {"value", "ci95", "p_a_better"}}``."""
    labels = np.asarray([str(x) for x in labels])
    probs_a, probs_b = np.asarray(probs_a), np.asarray(probs_b)

    def diff(idx: np.ndarray) -> np.ndarray:
        ma, mb = classification_metrics(labels[idx], probs_a[idx]), classification_metrics(labels[idx], probs_b[idx])
        return np.array([ma[k] - mb[k] for k in keys], dtype=float)

    point = diff(np.arange(len(labels)))
    rng = np.random.default_rng(seed)
    draws = np.array([diff(rng.integers(0, len(labels), len(labels))) for _ in range(n_boot)])
    out = {}
    for j, key in enumerate(keys):
        col = draws[:, j][~np.isnan(draws[:, j])]
        out[key] = {
            "value": float(point[j]),
            "ci95": [float(np.quantile(col, 0.025)), float(np.quantile(col, 0.975))],
            "p_a_better": float((col > 0).mean()),
        }
    return out


def seed_differences(study: pd.DataFrame, a: str, b: str, keys: Sequence[str]) -> pd.DataFrame:
    """Per seed, metric of variant ``a`` minus variant ``b`` (rows of :func:`classification.seed_study`)."""
    wide = study.pivot(index="seed", columns="variant", values=list(keys))
    return pd.DataFrame({k: wide[(k, a)] - wide[(k, b)] for k in keys})


def mask_verdict(paired: dict, per_seed: pd.DataFrame, key: str = "macro_f1") -> str:
    """A plain sentence on whether the method beats image-only on ``key``: shown (paired interval
    above zero and ahead for every seed), ahead but not shown (interval includes zero or a seed
    disagrees), or not ahead."""
    lo, hi = paired[key]["ci95"]
    mean = float(per_seed[key].mean())
    name = key.replace("_", "-")
    if lo > 0 and (per_seed[key] > 0).all():
        return f"The predicted mask helps: the method is ahead on {name} on the test images (interval above zero) and for every seed."
    if mean > 0 and paired[key]["value"] > 0:
        return (
            f"The method is ahead on {name} on average, but the paired interval includes zero or a seed disagrees: "
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
