"""How far a new site lies from home, before any model: a domain classifier (d2l, "Environment
and Distribution Shift"). Train a plain classifier to tell home scans from the site's scans;
its held-out AUC is the size of the covariate shift (0.5: indistinguishable, 1: a different
world). It needs no label of either set."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def gray_histograms(images: np.ndarray, bins: int = 32) -> np.ndarray:
    """(N, bins): each scan's gray-level histogram, as shares: what a gain or a dynamic range
    changes first."""
    images = np.asarray(images)
    edges = np.linspace(0, 256, bins + 1)
    return np.stack([np.histogram(img, edges)[0] / img.size for img in images])


def held_out_domain_scores(
    home: np.ndarray, site: np.ndarray, site_groups=None, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per scan: 1 for the site, 0 for home; the held-out probability of "site" from a logistic
    regression on ``home`` and ``site`` rows (features, one row per scan); and the scan's group.
    The folds keep each site patient on one side (``site_groups``), so the classifier cannot win
    by recognising a patient; with fewer than two site patients, each scan is its own group."""
    x = np.vstack([home, site])
    y = np.r_[np.zeros(len(home)), np.ones(len(site))]
    site_groups = np.arange(len(site)) if site_groups is None else np.asarray(site_groups)
    if len(set(site_groups)) < 2:
        site_groups = np.arange(len(site))
    folds = min(folds, len(set(site_groups)))
    rng = np.random.default_rng(seed)
    groups = np.r_[
        rng.integers(0, folds, len(home)).astype(str), np.char.add("site-", np.asarray(site_groups).astype(str))
    ]
    scores = np.zeros(len(y))
    for train, test in GroupKFold(n_splits=folds).split(x, y, groups):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000)).fit(x[train], y[train])
        scores[test] = model.predict_proba(x[test])[:, 1]
    own = np.r_[np.char.add("home-", np.arange(len(home)).astype(str)), groups[len(home) :]]
    return y, scores, own


def domain_auc(home: np.ndarray, site: np.ndarray, site_groups=None, folds: int = 5, seed: int = 0) -> float:
    """The held-out ROC AUC of :func:`held_out_domain_scores`: the size of the shift (its
    interval, resampling scans and patients, is ``evaluation.adaptation.domain_auc``'s)."""
    y, scores, _ = held_out_domain_scores(home, site, site_groups, folds, seed)
    return float(roc_auc_score(y, scores))
