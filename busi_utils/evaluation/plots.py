"""The figures of the evaluation chapters (5 and 7): confusion matrices, ROC curves, the
reliability diagram, the referral curve, the out-of-distribution scores and the seed study's
points; and chapter 6's pictures of what chapter 4 fitted (the temperature's loss curve, the
clear answers the referral cutoff keeps), and chapter 5's test Dice by class and size and per
fold U-Net. Each takes what a
chapter already computed and returns the figure, so a chapter's cell is the computation and
one call, and chapters 5 and 7 draw their referral curves alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from sklearn.metrics import confusion_matrix, roc_curve

from busi_utils.core.calibration import entropy
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


def temperature_nll(temperatures: np.ndarray, losses: Sequence[float], chosen: float):
    """Out-of-fold negative log-likelihood against the temperature (log axis), with the fitted T
    and T = 1 (probabilities unchanged) marked: chapter 6 shows where the curve bottoms out."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(temperatures, losses)
    ax.axvline(chosen, color="tab:red", ls="--", label=f"fitted T = {chosen:.2f}")
    ax.axvline(1, color="grey", ls=":", label="T = 1 (unchanged)")
    ax.set(xscale="log", xlabel="temperature T", ylabel="mean NLL, out of fold")
    ax.legend()
    return fig


def clear_answers(truth: np.ndarray, probs: np.ndarray, target: float, share: float):
    """Accuracy of the k clearest answers (lowest entropy first) against their share of all cases,
    with the target accuracy and the share the referral cutoff keeps as clear: the picture of
    :func:`busi_utils.evaluation.uncertainty.earned_cutoff` (``truth``: class indices)."""
    right = (np.asarray(probs).argmax(1) == truth)[np.argsort(entropy(probs), kind="stable")]
    kept = np.arange(1, len(right) + 1)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(kept / len(right) * 100, np.cumsum(right) / kept)
    ax.axhline(target, color="grey", ls=":", label=f"target: right {target:.0%} of the time")
    ax.axvline(share * 100, color="tab:red", ls="--", label="kept as clear by the cutoff")
    ax.set(xlabel="% clearest answers (lowest entropy first)", ylabel="accuracy of those", ylim=(0, 1.02))
    ax.legend()
    return fig


def dice_by_class_and_size(lesion: pd.DataFrame):
    """Test Dice of the lesion images by class and by lesion-size tertile (columns dice, label,
    ``lesion size``): where the U-Net struggles, as boxes rather than one mean."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    sns.boxplot(data=lesion, x="label", y="dice", ax=axes[0]).set(title="Test Dice by class", xlabel="")
    sns.boxplot(data=lesion, x="lesion size", y="dice", ax=axes[1]).set(title="Test Dice by lesion size", xlabel="")
    return fig


def member_dice(members: pd.DataFrame):
    """Bars of test Dice, one per fold U-Net and one for their mean (:func:`~busi_utils.stage1.ensemble.member_scores`)."""
    ax = members.plot.barh(x="model", y="dice", legend=False, figsize=(6, 0.4 * len(members) + 1), xlim=(0, 1))
    ax.set(xlabel="test Dice (lesion images)", ylabel="", title="One fold U-Net vs the mean of all")
    return ax.figure
