"""The fused decision: how the two views' probabilities and "a lesion was found" become one answer.

Inputs per image, all available at prediction time:

* ``p_scan``: the whole-scan view (scan + mask channel) ensemble's probabilities;
* ``p_crop``: the lesion-view (crop placed by the predicted mask) ensemble's probabilities;
* ``conf``: the segmenter's highest pixel probability. It separates lesion scans from normal
  ones well (a clearly outlined lesion argues against "normal") while the painted *area* does
  not: the U-Net paints something on most normal scans, but rarely with full confidence.

Candidates, simplest first (:data:`CANDIDATES`): the mean of the two views (nothing fitted);
the mean with a *veto* (a lesion found with ``conf >= t`` removes "normal"; one threshold); a
stacked multinomial logistic regression on the views' log-probabilities and logit(conf); the
**gated** mean, a lesion only where stage 1 and the views agree (:func:`gated`); and the
**two-step** decision, where stage 1 alone answers "is there a lesion?" and the two views only
say which kind (:func:`two_step`). For both, presence is stage 1's lesion confidence passing a
threshold chosen on BUSI's out-of-fold answers (:data:`PRESENCE_GRID`). At home the whole scan's
texture tells normal scans apart very well; on another scanner that texture is what changes, so
the rule a run ships is chosen where it must travel (``benchmarks/decision.csv``: BUSI's
out-of-fold answers and an external set's development patients), and a profile names it
(``decision.rule``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from busi_utils.core.config import CLASSES

CANDIDATES = ("mean", "mean+veto", "stacked", "gated", "two-step")
REFERENCES = ("scan", "crop")  # each view alone: reported, never chosen
ALL_RULES = (*REFERENCES, *CANDIDATES)
N_BOOT_SE = 500
VETO_GRID = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
NORMAL, BENIGN, MALIGNANT = (CLASSES.index(c) for c in ("normal", "benign", "malignant"))
EPS = 1e-4
PRESENCE_THRESHOLD = 0.5  # the U-Net's own: "a lesion" where it paints at least one pixel
PRESENCE_GRID = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)  # where presence may turn, chosen on BUSI's out-of-fold answers


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


def presence(conf, threshold: float = PRESENCE_THRESHOLD, slope: float = 1.0) -> np.ndarray:
    """P(a lesion) from the segmenter's highest pixel probability: a logistic curve in logit(conf)
    that crosses 1/2 at ``threshold`` (the U-Net's own 0.5); ``slope`` sets how fast it turns."""
    z = slope * (_logit(conf) - _logit(np.float64(threshold)))
    return 1.0 / (1.0 + np.exp(-z))


def two_step(p_scan, p_crop, conf, threshold: float = PRESENCE_THRESHOLD, slope: float = 1.0) -> np.ndarray:
    """The two-step decision as probabilities: ``P(normal) = 1 - q`` with ``q`` :func:`presence`
    (stage 1's answer), and the lesion's ``q`` shared between benign and malignant as the mean of
    the two views divides it. The views never decide *whether* there is a lesion, only *which*."""
    mean = (np.asarray(p_scan, np.float64) + np.asarray(p_crop, np.float64)) / 2
    malignant = mean[:, MALIGNANT] / np.maximum(mean[:, MALIGNANT] + mean[:, BENIGN], 1e-12)
    q = presence(conf, threshold, slope)
    out = np.zeros_like(mean)
    out[:, NORMAL], out[:, BENIGN], out[:, MALIGNANT] = 1 - q, q * (1 - malignant), q * malignant
    return out


def gated(p_scan, p_crop, conf, threshold: float = PRESENCE_THRESHOLD, slope: float = 1.0) -> np.ndarray:
    """The views' mean with its lesion probability *gated* by stage 1's :func:`presence` ``q``:
    ``P(benign) = q * mean_benign``, ``P(malignant) = q * mean_malignant``, the rest normal. A scan
    is called a lesion only when stage 1 and the views agree there is one; where the U-Net paints
    nothing, it is normal whatever the views say (the two-step rule, by contrast, never lets the
    views say "normal")."""
    mean = (np.asarray(p_scan, np.float64) + np.asarray(p_crop, np.float64)) / 2
    q = presence(conf, threshold, slope)
    out = mean * q[:, None]
    out[:, NORMAL] = 1 - q * (1 - mean[:, NORMAL])
    return out


def fit_presence_slope(y: np.ndarray, conf) -> float:
    """How sharply presence turns with logit(conf): the slope of a class-balanced logistic
    regression of "lesion" on logit(conf) (its midpoint is not kept: the threshold is the U-Net's)."""
    from sklearn.linear_model import LogisticRegression  # light CLI path: loaded when used

    lesion = np.asarray(y) != NORMAL
    if lesion.all() or not lesion.any():
        return 1.0
    lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(_logit(conf)[:, None], lesion)
    return float(max(lr.coef_[0, 0], 0.1))


def _macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    from busi_utils.core.scores import (
        macro_f1_indices,  # here: metrics imports pandas, which the light Predictor never loads
    )

    return macro_f1_indices(y, np.asarray(p).argmax(1))


def fit(kind: str, y: np.ndarray, p_scan, p_crop, conf, grid: Sequence[float] = PRESENCE_GRID) -> dict:
    """The parameters of candidate ``kind`` fitted on these images (``y``: class indices);
    ``grid``: the presence thresholds tried (a new site's may lie lower than BUSI's)."""
    params: dict = {"kind": kind}
    if kind == "mean+veto":
        mean = (np.asarray(p_scan) + np.asarray(p_crop)) / 2
        scores = [_macro_f1(y, veto(mean, conf, t)) for t in VETO_GRID]
        params["threshold"] = float(VETO_GRID[int(np.argmax(scores))])
    elif kind in ("two-step", "gated"):
        params["slope"] = fit_presence_slope(y, conf)
        rule = two_step if kind == "two-step" else gated
        scores = [_macro_f1(y, rule(p_scan, p_crop, conf, t, params["slope"])) for t in grid]
        params["threshold"] = float(grid[int(np.argmax(scores))])
    elif kind == "stacked":
        from sklearn.linear_model import LogisticRegression  # light CLI path: loaded when used

        lr = LogisticRegression(C=1.0, max_iter=2000).fit(stack_features(p_scan, p_crop, conf), y)
        params["coef"], params["intercept"] = lr.coef_.tolist(), lr.intercept_.tolist()
    elif kind not in ALL_RULES:
        raise ValueError(f"unknown fusion {kind!r}: {', '.join(ALL_RULES)}")
    return params


def fuse(params: dict, p_scan, p_crop, conf) -> np.ndarray:
    """Fused class probabilities (N, 3) by fitted ``params`` (what the Predictor computes)."""
    kind = params["kind"]
    p_scan, p_crop = np.asarray(p_scan, np.float64), np.asarray(p_crop, np.float64)
    if kind == "scan":
        return p_scan
    if kind == "crop":
        return p_crop
    mean = (p_scan + p_crop) / 2
    if kind == "mean":
        return mean
    if kind == "mean+veto":
        return veto(mean, conf, params["threshold"])
    if kind == "two-step":
        return two_step(p_scan, p_crop, conf, params["threshold"], params["slope"])
    if kind == "gated":
        return gated(p_scan, p_crop, conf, params["threshold"], params["slope"])
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


def compare(labels: Sequence[str], folds: Sequence[int], p_scan, p_crop, conf, seed: int = 0):
    """Every rule's cross-validated out-of-fold scores (the views alone first, then the
    candidates), with ``se``: the bootstrap standard error of the macro-F1 difference between the
    best candidate and each rule (paired: the same resampled images), and the rules'
    cross-validated probabilities (``{kind: probs}``), on the training pool only. (pandas is
    imported here, not at the top: the Predictor's light path imports this module.)"""
    import pandas as pd  # light CLI path: loaded when used
    from sklearn.metrics import log_loss  # light CLI path: loaded when used

    from busi_utils.core.scores import classification_metrics  # light CLI path: loaded when used

    y = np.array([CLASSES.index(str(label)) for label in labels])
    folds = np.asarray(folds)
    rows, probs = [], {}
    for kind in ALL_RULES:
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
    table = pd.DataFrame(rows).set_index("fusion")
    best = table.loc[list(CANDIDATES), "macro_f1"].idxmax()
    table["se"] = [paired_se(y, probs[best], probs[k], seed) for k in table.index]
    return table, probs


def paired_se(y: np.ndarray, p_a: np.ndarray, p_b: np.ndarray, seed: int = 0, n_boot: int = N_BOOT_SE) -> float:
    """Bootstrap standard error of macro-F1(a) - macro-F1(b) over images (both scored on the
    same resampled images each time). 0 when a and b give the same answers."""
    from busi_utils.core.scores import (
        macro_f1_indices,  # here: metrics imports pandas, which the light Predictor never loads
    )

    a, b = np.asarray(p_a).argmax(1), np.asarray(p_b).argmax(1)
    if np.array_equal(a, b):
        return 0.0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    diffs = [macro_f1_indices(y[i], a[i]) - macro_f1_indices(y[i], b[i]) for i in idx]
    return float(np.std(diffs, ddof=1))


def _floor(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Probabilities kept off zero (a vetoed class), still summing to one: log-loss stays finite."""
    p = np.clip(p, eps, 1)
    return p / p.sum(1, keepdims=True)


def choose(table) -> str:
    """The one-SE rule: the simplest candidate (in :data:`CANDIDATES` order) whose macro-F1 is
    within its ``se`` (from :func:`compare`) of the best candidate's. The reference rows (each
    view alone) are never chosen."""
    cands = [k for k in CANDIDATES if k in table.index]
    best = table.loc[cands, "macro_f1"].max()
    return next(k for k in cands if table.loc[k, "macro_f1"] >= best - table.loc[k, "se"])


def select(oof, seed: int = 0, rule: str | None = None) -> tuple:
    """From an out-of-fold table (:func:`busi_utils.stage2.crossfit.oof_table`): ``(comparison, chosen
    kind, its parameters fitted on all those images, its cross-validated probabilities)``: the
    fused rule of a run, and what its temperature and referral cutoff are fitted on. ``rule``: the
    profile's ``decision.rule``, chosen where the rule must travel (``benchmarks/decision.csv``);
    without it, the one-SE rule on these images (:func:`choose`)."""
    p_scan, p_crop = (oof[[f"{v}:p_{c}" for c in CLASSES]].to_numpy() for v in (SCAN_VIEW, CROP_VIEW))
    comparison, cv_probs = compare(oof["label"], oof["fold"], p_scan, p_crop, oof["conf"], seed)
    if rule is not None and rule not in CANDIDATES:
        raise ValueError(f"unknown decision rule {rule!r}: {', '.join(CANDIDATES)}")
    chosen = rule or choose(comparison)
    y = np.array([CLASSES.index(str(c)) for c in oof["label"]])
    return comparison, chosen, fit(chosen, y, p_scan, p_crop, oof["conf"]), cv_probs[chosen]


SCAN_VIEW, CROP_VIEW = "image+pred_mask", "lesion_crop"


def decide(params: dict, view_probs: dict, conf, temperature: float = 1.0) -> np.ndarray:
    """The method's answer, as the Predictor computes it on either backend: the views' ensemble
    probabilities fused by ``params``, then softened by the temperature fitted on held-out images."""
    from busi_utils.core.calibration import apply_temperature  # light CLI path: loaded when used

    fused = fuse(params, view_probs[SCAN_VIEW], view_probs.get(CROP_VIEW, view_probs[SCAN_VIEW]), conf)
    return apply_temperature(fused, temperature)


def fit_shape_alone(features: np.ndarray, labels: Sequence[str], C: float = 1.0) -> dict:
    """ "Shape alone", the ablation that reads no pixel: a multinomial logistic regression on the
    twelve descriptors of the predicted mask (:func:`busi_utils.stage2.shape.shape_matrix`), standardised."""
    from sklearn.linear_model import LogisticRegression  # light CLI path: loaded when used

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
