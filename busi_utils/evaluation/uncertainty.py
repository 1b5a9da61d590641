"""How sure is the model, and has it seen anything like this input? NumPy only.

Three numbers travel with every prediction (notebooks 04-06, :mod:`busi_utils.serve.infer`):

* **temperature** T (Guo et al. 2017): one scalar, fitted on validation, that softens or
  sharpens the probabilities so that "90 %" is right about nine times in ten;
* **predictive entropy** of the test-time-augmented probabilities: high when the views
  disagree or the classes are close; above a cutoff chosen on validation, refer to a human;
* **out-of-distribution score**: Mahalanobis distances (Lee et al. 2018) to the training
  scans, in two views of what the classifier sees: its pooled features, and simple statistics
  of its image channel (gray-level histogram, edge energy across and along the beam, brightness
  by depth). Each distance is divided by its threshold (a high quantile of validation scans);
  the score is the larger ratio, and above 1 the input is flagged. The feature view alone
  misses noise and text (they land *near* the feature mean: measured, ``benchmarks/ood.csv``);
  the statistics view catches them; together they flag what either finds unfamiliar.

This module imports neither torch nor pandas, so the light inference path can use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from busi_utils.core.calibration import (  # re-exported: the chapters call uncertainty.<name>
    _labels_to_idx,
    apply_temperature,
    entropy,
    fit_temperature,
)

__all__ = [
    "apply_temperature",
    "earned_cutoff",
    "entropy",
    "fit_feature_density",
    "fit_ood",
    "fit_temperature",
    "load_ood",
    "ood_distance",
    "ood_score",
    "scan_statistics",
]


def earned_cutoff(
    labels: Sequence[str], probs: np.ndarray, target: float = 0.9, min_share: float = 0.1
) -> dict[str, float]:
    """The referral cutoff on entropy that earns the word "clear": the largest cutoff at which
    the held-out cases at or below it were right at least ``target`` of the time. When even
    the clearest ``min_share`` of cases miss the target, the cutoff keeps that share (and says
    how right they were). Returns ``{cutoff, accuracy, share}`` of the cases below it."""
    y = _labels_to_idx(labels)
    h = entropy(probs)
    order = np.argsort(h, kind="stable")
    right = (np.asarray(probs).argmax(1) == y)[order].astype(float)
    accuracy = np.cumsum(right) / np.arange(1, len(y) + 1)
    floor = max(int(np.ceil(min_share * len(y))) - 1, 0)
    ok = np.flatnonzero(accuracy >= target)
    ok = ok[ok >= floor]
    k = int(ok.max()) if len(ok) else floor
    return {"cutoff": float(h[order][k]), "accuracy": float(accuracy[k]), "share": float((k + 1) / len(y))}


def fit_feature_density(features: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and shrunk inverse covariance of training features (N, D).

    With a few hundred scans and 1280 feature dimensions the sample covariance is singular;
    Ledoit-Wolf shrinkage (scikit-learn) gives a well-conditioned estimate without a knob.
    """
    from sklearn.covariance import LedoitWolf  # light CLI path: loaded when used

    lw = LedoitWolf().fit(features.astype(np.float64))
    return {"mean": lw.location_.astype(np.float32), "precision": lw.precision_.astype(np.float32)}


def ood_distance(features: np.ndarray, density: dict[str, np.ndarray]) -> np.ndarray:
    """Mahalanobis distance of each feature vector (N, D) to the training scans' density."""
    d = features.astype(np.float32) - density["mean"]
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, density["precision"], d), 0.0))


OOD_VIEWS = ("features", "scan")


def scan_statistics(scans: np.ndarray) -> np.ndarray:
    """(N, S, S) scan channel in [0, 1] -> (N, 24) statistics that breast ultrasound frames share:
    the square root of a 16-bin gray histogram, mean edge energy across and along the beam and
    their ratio, mean brightness in four depth bands (ultrasound fades with depth), contrast."""
    x = np.asarray(scans, dtype=np.float32)
    hist = np.stack([np.histogram(img, bins=16, range=(0.0, 1.0))[0] / img.size for img in x])
    across, along = np.abs(np.diff(x, axis=2)).mean((1, 2)), np.abs(np.diff(x, axis=1)).mean((1, 2))
    bands = np.stack([band.mean((1, 2)) for band in np.array_split(x, 4, axis=1)], 1)
    edges = np.stack([across, along, along / (across + 1e-3)], 1)
    return np.concatenate([np.sqrt(hist), edges, bands, x.std((1, 2))[:, None]], 1).astype(np.float32)


def fit_ood(train: dict[str, np.ndarray], valid: dict[str, np.ndarray], quantile: float) -> dict[str, np.ndarray]:
    """Per view (``features``, ``scan``): the training density and the threshold, the
    ``quantile`` of validation distances. Returns flat arrays, as saved in ``ood.npz``."""
    out = {}
    for view in OOD_VIEWS:
        density = fit_feature_density(train[view])
        out |= {f"{view}_{k}": v for k, v in density.items()}
        out[f"{view}_threshold"] = np.float32(np.quantile(ood_distance(valid[view], density), quantile))
    return out


def ood_score(views: dict[str, np.ndarray], ood: dict[str, np.ndarray]) -> np.ndarray:
    """The larger of the views' distance / threshold ratios per input: above 1, unfamiliar."""
    ratios = [
        ood_distance(views[v], {"mean": ood[f"{v}_mean"], "precision": ood[f"{v}_precision"]}) / ood[f"{v}_threshold"]
        for v in OOD_VIEWS
    ]
    return np.max(ratios, axis=0)


def load_ood(path) -> dict[str, np.ndarray] | None:
    """The saved check (``exports/ood.npz``), or None when absent or from before both views."""
    if not Path(path).exists():
        return None
    with np.load(path) as z:
        ood = {k: z[k] for k in z.files}
    return ood if all(f"{v}_threshold" in ood for v in OOD_VIEWS) else None
