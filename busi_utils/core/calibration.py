"""Temperature scaling and predictive entropy: the two numbers that make a probability honest.

They live below the stages because the fused decision (:mod:`busi_utils.stage2.fusion`) calibrates
its cross-validated probabilities with them, and the evaluation and the Predictor read them back
(:mod:`busi_utils.evaluation.uncertainty` re-exports them). NumPy only, scipy when fitting.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from busi_utils.core.config import CLASSES  # the order of every probability vector


def _labels_to_idx(labels: Sequence[str]) -> np.ndarray:
    return np.array([CLASSES.index(str(label)) for label in labels])


def fit_temperature(labels: Sequence[str], probs: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(log p / T)
    (Guo et al. 2017). Fit on validation data only; it changes confidence, never the ranking."""
    from scipy.optimize import minimize_scalar  # light CLI path: loaded when used

    y = _labels_to_idx(labels)
    logits = np.log(np.clip(probs, 1e-8, 1))

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-3, 3), method="bounded").x))


def apply_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    """softmax(log p / T): the calibrated probabilities."""
    z = np.log(np.clip(probs, 1e-8, 1)) / t
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Predictive entropy (nats) per case: 0 when certain, log(3) when clueless."""
    p = np.clip(probs, 1e-12, 1)
    return -(p * np.log(p)).sum(1)
