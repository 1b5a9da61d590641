"""How sure is the model, and has it seen anything like this input? NumPy only.

Three numbers travel with every prediction (notebooks 04-06, :mod:`busi_utils.infer`):

* **temperature** T (Guo et al. 2017): one scalar, fitted on validation, that softens or
  sharpens the probabilities so that "90 %" is right about nine times in ten;
* **predictive entropy** of the test-time-augmented probabilities: high when the views
  disagree or the classes are close; above a cutoff chosen on validation, refer to a human;
* **out-of-distribution distance**: the Mahalanobis distance (Lee et al. 2018) of the
  classifier's pooled features to those of the training scans. A photo, noise or a page of
  text lands far from every ultrasound the model trained on, however confident its label.

This module imports neither torch nor pandas, so the light inference path can use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .config import CLASSES  # the order of every probability vector


def _labels_to_idx(labels: Sequence[str]) -> np.ndarray:
    return np.array([CLASSES.index(str(label)) for label in labels])


def fit_temperature(labels: Sequence[str], probs: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of softmax(log p / T)
    (Guo et al. 2017). Fit on validation data only; it changes confidence, never the ranking."""
    from scipy.optimize import minimize_scalar

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


def fit_feature_density(features: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and shrunk inverse covariance of training features (N, D).

    With a few hundred scans and 1280 feature dimensions the sample covariance is singular;
    Ledoit-Wolf shrinkage (scikit-learn) gives a well-conditioned estimate without a knob.
    """
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(features.astype(np.float64))
    return {"mean": lw.location_.astype(np.float32), "precision": lw.precision_.astype(np.float32)}


def ood_distance(features: np.ndarray, density: dict[str, np.ndarray]) -> np.ndarray:
    """Mahalanobis distance of each feature vector (N, D) to the training scans' density."""
    d = features.astype(np.float32) - density["mean"]
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, density["precision"], d), 0.0))
