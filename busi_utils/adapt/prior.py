"""The class mix of a new site, estimated without labels, and probabilities corrected for it.

A classifier's probabilities carry the class mix it was trained on (its *prior*). BUSI is 17%
normal scans; BUS-UCLM 61%. When only the mix changes (*label shift*: p(x | y) the same),
Bayes' rule corrects each answer exactly (:func:`adjust_to_prior`), and the new mix itself can
be estimated from unlabelled scans:

* :func:`em_prior` (Saerens, Latinne & Decaestecker 2002): alternate "correct the answers for the
  current prior" and "the prior is the mean corrected answer". It trusts the probabilities to
  be calibrated on the new site, which covariate shift breaks.
* :func:`bbse_prior` (black-box shift estimation; Lipton, Wang & Smola 2018): the confusion
  matrix of the *hard* answers, measured at home on out-of-fold answers, is inverted against the
  new site's answer frequencies. It needs only that the confusions stay as they were.
"""

from __future__ import annotations

import numpy as np


def _as_prior(p, k: int, name: str) -> np.ndarray:
    p = np.asarray(p, np.float64)
    if p.shape != (k,) or (p < 0).any() or not np.isclose(p.sum(), 1):
        raise ValueError(f"{name}: a prior of {k} non-negative numbers summing to 1 was expected, got {p}")
    return p


def adjust_to_prior(probs: np.ndarray, train_prior, new_prior) -> np.ndarray:
    """Bayes' correction for a new class mix: ``p'(y|x) ∝ p(y|x) · new(y) / train(y)``."""
    probs = np.asarray(probs, np.float64)
    k = probs.shape[1]
    w = _as_prior(new_prior, k, "new_prior") / _as_prior(train_prior, k, "train_prior")
    out = probs * w
    return out / np.maximum(out.sum(1, keepdims=True), 1e-300)


def em_prior(
    probs: np.ndarray, train_prior, max_iter: int = 200, tol: float = 1e-8, floor: float = 0.0
) -> tuple[np.ndarray, int]:
    """Saerens' EM: the class mix that explains the unlabelled ``probs``; returns ``(prior,
    iterations)``. ``floor``: no class's share may fall below it (a bounded prior; 0: plain EM)."""
    probs = np.asarray(probs, np.float64)
    train = _as_prior(train_prior, probs.shape[1], "train_prior")
    prior, iterations = train.copy(), 0
    while iterations < max_iter:
        iterations += 1
        new = adjust_to_prior(probs, train, prior).mean(0)
        if floor > 0:
            new = _bounded(new, floor)
        done = np.abs(new - prior).max() < tol
        prior = new
        if done:
            break
    return prior, iterations


def _bounded(p: np.ndarray, floor: float) -> np.ndarray:
    """``p`` with every share at least ``floor``, the rest scaled to keep the sum 1."""
    low = p < floor
    if not low.any():
        return p
    rest = 1 - floor * low.sum()
    out = np.where(low, floor, p * rest / p[~low].sum())
    return out


def confusion_joint(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """``C[i, j] = P(answer i, truth j)`` from labelled (home, out-of-fold) answers."""
    c = np.zeros((k, k))
    np.add.at(c, (np.asarray(y_pred), np.asarray(y_true)), 1.0)
    return c / c.sum()


def bbse_prior(joint: np.ndarray, answers: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """BBSE: solve ``C w = mu`` where ``mu`` is the share of each hard answer on the new site
    and ``C`` the home joint (:func:`confusion_joint`); the new prior is ``w · home prior``,
    clipped at ``floor`` and renormalised (a least-squares solve when ``C`` is singular)."""
    joint = np.asarray(joint, np.float64)
    k = joint.shape[0]
    mu = np.bincount(np.asarray(answers), minlength=k) / len(answers)
    w = np.linalg.lstsq(joint, mu, rcond=None)[0]
    prior = np.clip(w * joint.sum(0), 0, None)
    prior = prior / prior.sum() if prior.sum() > 0 else np.full(k, 1 / k)
    return _bounded(prior, floor) if floor > 0 else prior
