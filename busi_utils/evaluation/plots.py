"""The figures of the evaluation chapters (5 and 7): confusion matrices, ROC curves, the
reliability diagram, the referral curve, the out-of-distribution scores and the seed study's
points. Each takes what a
chapter already computed and returns the figure, so a chapter's cell is the computation and
one call, and chapters 5 and 7 draw their referral curves alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from sklearn.metrics import confusion_matrix, roc_curve

from busi_utils.core.config import CLASSES
from busi_utils.core.scores import reliability_curve


def confusion_matrices(frames: Mapping[str, pd.DataFrame], names: Sequence[str]):
    """One confusion matrix per variant in ``names`` (frames with ``label`` and ``pred``), side by side."""
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names):
        cm = confusion_matrix(frames[name]["label"], frames[name]["pred"], labels=list(CLASSES))
        sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax, xticklabels=CLASSES, yticklabels=CLASSES)
        ax.set(title=name, xlabel="predicted", ylabel="true" if ax is axes[0][0] else "")
    fig.tight_layout()
    return fig


def roc_curves(frames: Mapping[str, pd.DataFrame], method: str = "method", dashed: str = "image+gt_mask"):
    """Left: the method's one-vs-rest ROC per class. Right: malignant vs rest for every variant
    (``dashed``: the leaky ceiling). Frames carry ``label`` and ``p_<class>``."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for c in CLASSES:
        fpr, tpr, _ = roc_curve(frames[method]["label"] == c, frames[method][f"p_{c}"])
        axes[0].plot(fpr, tpr, label=c)
    for name, df in frames.items():
        fpr, tpr, _ = roc_curve(df["label"] == "malignant", df["p_malignant"])
        axes[1].plot(fpr, tpr, label=name, ls="--" if name == dashed else "-")
    axes[0].set(title="Method, one-vs-rest ROC", xlabel="false-positive rate", ylabel="true-positive rate")
    axes[1].set(title="Malignant vs rest, every variant", xlabel="false-positive rate")
    for ax in axes:
        ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
        ax.legend(fontsize=8)
    return fig


def reliability(labels: Sequence[str], named_probs: Mapping[str, np.ndarray], title: str):
    """Reliability diagram: confidence against accuracy, one line per set of probabilities."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, probs in named_probs.items():
        rc = reliability_curve(labels, probs)
        ax.plot(rc["confidence"], rc["accuracy"], marker="o", label=name)
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    ax.set(xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend()
    return fig


def referral(curve: pd.DataFrame, title: str, marked: float | None = None):
    """Accuracy on the cases kept against the share of the most uncertain ones referred
    (:func:`busi_utils.core.scores.referral_curve`); ``marked``: the share the tool's
    cutoff refers, drawn as a dotted line."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(curve["referred"] * 100, curve["accuracy"], marker="o")
    if marked is not None:
        ax.axvline(marked * 100, color="grey", ls=":", label="the out-of-fold cutoff")
        ax.legend()
    ax.set(xlabel="% most uncertain cases referred", ylabel="accuracy on the rest", title=title)
    return fig


def ood_scores(score: np.ndarray, what: str = "test scans"):
    """Histogram of out-of-distribution scores (distance over threshold; flagged above 1)."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(score, bins=30)
    ax.axvline(1, color="tab:red", label="flag above")
    ax.set(xlabel="out-of-distribution score (distance / threshold)", ylabel=what)
    ax.legend()
    return fig


def seed_points(record: pd.DataFrame, columns: Mapping[str, str], metric: str = "macro-F1"):
    """One point per training seed and variant, one colour per set (``columns``: the record's
    column -> its set's name): how far each classifier moves with the seed, at home and away."""
    long = record.melt(id_vars=["seed", "variant"], value_vars=list(columns), var_name="set")
    long["set"] = long["set"].map(dict(columns))
    fig, ax = plt.subplots(figsize=(9, 3.2))
    sns.stripplot(data=long, x="variant", y="value", hue="set", dodge=True, size=7, ax=ax)
    ax.set(ylabel=metric, xlabel="", ylim=(0, 1), title="One point per training seed")
    ax.legend(title="", loc="lower left")
    return fig
