"""The fused decision: how the two views' probabilities and "a lesion was found" become one answer.

Inputs per image, all available at prediction time:

* ``p_scan``: the whole-scan view (scan + mask channel) ensemble's probabilities;
* ``p_crop``: the lesion-view (crop placed by the predicted mask) ensemble's probabilities;
* ``conf``: the segmenter's highest pixel probability. It separates lesion scans from normal
  ones well (a clearly outlined lesion argues against "normal") while the painted *area* does
  not: the U-Net paints something on most normal scans, but rarely with full confidence.

Candidates, simplest first (:data:`CANDIDATES`): the scan view alone; the mean of the views;
the mean with a *veto* (a lesion found with ``conf >= t`` removes "normal"); and a stacked
multinomial logistic regression on the views' log-probabilities and logit(conf). They are
compared on out-of-fold probabilities of the training pool (every fitted part cross-validated
over the folds), and the simplest within :data:`TOLERANCE` of the best macro-F1 is kept:
differences smaller than that do not survive a second run on ~600 images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import CLASSES

CANDIDATES = ("scan", "mean", "mean+veto", "stacked")
TOLERANCE = 0.01
VETO_GRID = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
NORMAL = CLASSES.index("normal")
EPS = 1e-4


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def stack_features(p_scan: np.ndarray, p_crop: np.ndarray, conf: np.ndarray) -> np.ndarray:
    """(N, 7): log-probabilities of both views and logit(conf), the stacked model's inputs."""
    logs = [np.log(np.clip(np.asarray(p, np.float64), EPS, 1)) for p in (p_scan, p_crop)]
    return np.column_stack([*logs, _logit(conf)])


def veto(p: np.ndarray, conf: np.ndarray, threshold: float) -> np.ndarray:
    """Where a lesion was found (``conf >= threshold``), P(normal) becomes 0 and the rest is renormalised."""
    p = np.array(p, dtype=np.float64)
    found = np.asarray(conf) >= threshold
    p[found, NORMAL] = 0.0
    p[found] /= np.maximum(p[found].sum(1, keepdims=True), 1e-12)
    return p


def _macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, p.argmax(1), average="macro", labels=range(len(CLASSES)), zero_division=0))


def fit(kind: str, y: np.ndarray, p_scan, p_crop, conf) -> dict:
    """The parameters of candidate ``kind`` fitted on these images (``y``: class indices)."""
    params: dict = {"kind": kind}
    if kind == "mean+veto":
        mean = (np.asarray(p_scan) + np.asarray(p_crop)) / 2
        scores = [_macro_f1(y, veto(mean, conf, t)) for t in VETO_GRID]
        params["threshold"] = float(VETO_GRID[int(np.argmax(scores))])
    elif kind == "stacked":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1.0, max_iter=2000).fit(stack_features(p_scan, p_crop, conf), y)
        params["coef"], params["intercept"] = lr.coef_.tolist(), lr.intercept_.tolist()
    elif kind not in CANDIDATES:
        raise ValueError(f"unknown fusion {kind!r}: {', '.join(CANDIDATES)}")
    return params


def fuse(params: dict, p_scan, p_crop, conf) -> np.ndarray:
    """Fused class probabilities (N, 3) by fitted ``params`` (what the Predictor computes)."""
    kind = params["kind"]
    p_scan, p_crop = np.asarray(p_scan, np.float64), np.asarray(p_crop, np.float64)
    if kind == "scan":
        return p_scan
    mean = (p_scan + p_crop) / 2
    if kind == "mean":
        return mean
    if kind == "mean+veto":
        return veto(mean, conf, params["threshold"])
    z = stack_features(p_scan, p_crop, conf) @ np.asarray(params["coef"]).T + np.asarray(params["intercept"])
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def cross_validated(kind: str, y: np.ndarray, folds: np.ndarray, p_scan, p_crop, conf) -> np.ndarray:
    """Out-of-fold fused probabilities: for each fold, ``kind`` fitted on the other folds only."""
    out = np.zeros((len(y), len(CLASSES)))
    p_scan, p_crop, conf = np.asarray(p_scan), np.asarray(p_crop), np.asarray(conf)
    for k in np.unique(folds):
        held = folds == k
        params = fit(kind, y[~held], p_scan[~held], p_crop[~held], conf[~held])
        out[held] = fuse(params, p_scan[held], p_crop[held], conf[held])
    return out


def compare(labels: Sequence[str], folds: Sequence[int], p_scan, p_crop, conf):
    """Every candidate's cross-validated out-of-fold scores, and the chosen candidate's
    cross-validated probabilities (``{kind: probs}``), on the training pool only. (pandas is
    imported here, not at the top: the Predictor's light path imports this module.)"""
    import pandas as pd
    from sklearn.metrics import log_loss

    from .metrics import classification_metrics

    y = np.array([CLASSES.index(str(label)) for label in labels])
    folds = np.asarray(folds)
    rows, probs = [], {}
    for kind in CANDIDATES:
        probs[kind] = cross_validated(kind, y, folds, p_scan, p_crop, conf)
        m = classification_metrics(labels, probs[kind])
        rows.append(
            {
                "fusion": kind,
                "macro_f1": m["macro_f1"],
                "accuracy": m["accuracy"],
                "malignant_recall": m["malignant_recall"],
                "normal_recall": m["normal_recall"],
                "log_loss": float(log_loss(y, _floor(probs[kind]), labels=range(len(CLASSES)))),
            }
        )
    return pd.DataFrame(rows).set_index("fusion"), probs


def _floor(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Probabilities kept off zero (a vetoed class), still summing to one: log-loss stays finite."""
    p = np.clip(p, eps, 1)
    return p / p.sum(1, keepdims=True)


def choose(table, tolerance: float = TOLERANCE) -> str:
    """The simplest candidate (in :data:`CANDIDATES` order) within ``tolerance`` of the best macro-F1."""
    best = table["macro_f1"].max()
    return next(k for k in CANDIDATES if k in table.index and table.loc[k, "macro_f1"] >= best - tolerance)


SCAN_VIEW, CROP_VIEW = "image+pred_mask", "lesion_crop"


def decide(params: dict, view_probs: dict, conf, temperature: float = 1.0) -> np.ndarray:
    """The method's answer, as the Predictor computes it on either backend: the views' ensemble
    probabilities fused by ``params``, then softened by the temperature fitted on held-out images."""
    from .uncertainty import apply_temperature

    fused = fuse(params, view_probs[SCAN_VIEW], view_probs.get(CROP_VIEW, view_probs[SCAN_VIEW]), conf)
    return apply_temperature(fused, temperature)


def fit_shape_alone(features: np.ndarray, labels: Sequence[str], C: float = 1.0) -> dict:
    """ "Shape alone", the ablation that reads no pixel: a multinomial logistic regression on the
    twelve descriptors of the predicted mask (:func:`busi_utils.shape.shape_matrix`), standardised."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, np.float64)
    mean, scale = x.mean(0), x.std(0) + 1e-9
    y = np.array([CLASSES.index(str(label)) for label in labels])
    lr = LogisticRegression(C=C, max_iter=5000, class_weight="balanced").fit((x - mean) / scale, y)
    return {
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": lr.coef_.tolist(),
        "intercept": lr.intercept_.tolist(),
    }


def predict_shape_alone(params: dict, features: np.ndarray) -> np.ndarray:
    """Class probabilities (N, 3) of :func:`fit_shape_alone`'s model."""
    x = (np.asarray(features, np.float64) - np.asarray(params["mean"])) / np.asarray(params["scale"])
    z = x @ np.asarray(params["coef"]).T + np.asarray(params["intercept"])
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)
