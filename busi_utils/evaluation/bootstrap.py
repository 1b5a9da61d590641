"""Intervals for small test sets: the percentile bootstrap (resampling images, or whole patients),
the *paired* bootstrap of a difference between two classifiers on the same images, and the
verdict that needs both the interval and every seed to agree before it says "shown"."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from busi_utils.core.scores import classification_metrics


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
    groups: Sequence | None = None,
) -> dict[str, dict]:
    """Difference ``a - b`` of two models scored on the *same* images, with a paired percentile
    bootstrap 95% interval: each resample draws one set of images (whole patients, with
    ``groups``: a patient per image) and scores both models on it,
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
    draws = np.array([diff(resample_indices(rng, len(labels), groups), keys) for _ in range(n_boot)]).reshape(
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


def ci_text(value: float | Mapping | None, ci: Sequence | None = None, signed: bool = False) -> str:
    """A score as every chapter prints it, never without its interval when it has one: ``0.712 (95%
    interval 0.650 to 0.770)``. ``value`` may be a paired result ``{"value", "ci95"}``; ``signed``
    writes a difference with its sign; a missing score prints ``-``."""
    if isinstance(value, Mapping):
        value, ci = value["value"], value["ci95"]
    if value is None:
        return "-"
    fmt = "+.3f" if signed else ".3f"
    if ci is None or None in ci:
        return f"{value:{fmt}}"
    return f"{value:{fmt}} (95% interval {ci[0]:{fmt}} to {ci[1]:{fmt}})"


def score_text(scores: Mapping, key: str) -> str:
    """:func:`ci_text` of ``key`` in a flat report, whose interval is stored beside it as ``key_ci95``."""
    return ci_text(scores.get(key), scores.get(f"{key}_ci95"))


def interval_verdict(interval: Sequence, above: str, below: str) -> str:
    """A difference's verdict read off its 95% interval, so no prose states a direction the
    interval does not show: ``above`` or ``below`` zero, or "cannot tell"."""
    low, high = interval
    if low is not None and low > 0:
        return f"the interval lies above zero: {above}"
    if high is not None and high < 0:
        return f"the interval lies below zero: {below}"
    return "the interval includes zero: these cases cannot tell"


def mask_verdict(paired: dict, per_seed: pd.DataFrame, key: str = "macro_f1", unit: str = "seed") -> str:
    """A plain sentence on whether the method beats image-only on ``key``: shown (paired interval
    above zero and ahead for every seed), ahead but not shown (interval includes zero or a seed
    disagrees), or not ahead."""
    lo = paired[key]["ci95"][0]
    mean = float(per_seed[key].mean())
    name = key.replace("_", "-")
    if lo > 0 and (per_seed[key] > 0).all():
        return (
            f"The predicted mask helps: the method is ahead on {name} by {ci_text(paired[key], signed=True)}"
            f" on the test images, and for every {unit}."
        )
    if mean > 0 and paired[key]["value"] > 0:
        return (
            f"The method's {name} is higher by {ci_text(paired[key], signed=True)}, but the interval includes zero"
            f" or a {unit} disagrees: the mask's benefit is not shown on a test split of this size."
        )
    return f"The method is not ahead of image-only on {name}: the difference is {ci_text(paired[key], signed=True)}."
