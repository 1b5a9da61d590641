"""How fastai shows the classifiers' inputs, so that its own views work on them: ``show_batch``,
``learn.show_results`` and ``ClassificationInterpretation.plot_top_losses``.

fastai draws a ``TensorImage`` of one or three channels. The method's input has two (the scan and
the predicted mask), which fastai cannot draw; :class:`ScanWithMask` is a ``TensorImage`` that
draws the first channel in grey and outlines the second one (the mask, at 0.5) in cyan. fastai's
transforms keep the subclass through augmentation, normalisation and decoding.

Also chapter 4's figures of stage 2's evidence and decision (shape by class, the rules compared,
stage 1's lesion confidence), so the chapter's cells are the computation and one call.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from fastai.torch_core import TensorImage

from busi_utils.core.config import CLASSES


class ScanWithMask(TensorImage):
    """A classifier input (C, S, S): channel 0 the scan (or the lesion view), channel 1 (if
    any) a mask, drawn as an outline on the scan."""

    def show(self, ctx=None, **kwargs):
        t = self.detach().cpu().float()
        ax = ctx if ctx is not None else plt.subplots(figsize=kwargs.get("figsize", (3, 3)))[1]
        ax.imshow(t[0].numpy(), cmap="gray", vmin=0, vmax=1)
        if len(t) > 1 and float(t[1].max()) >= 0.5 > float(t[1].min()):
            ax.contour(t[1].numpy(), levels=[0.5], colors="cyan", linewidths=1)
        if kwargs.get("title"):
            ax.set_title(kwargs["title"])
        ax.axis("off")
        return ax


def plot_shape_by_class(features: pd.DataFrame, names: Sequence[str]):
    """One box plot per descriptor in ``names``, by class (``features`` has a ``label`` column):
    which outline properties differ between normal, benign and malignant scans."""
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        sns.boxplot(data=features, x="label", y=name, order=list(CLASSES), ax=ax).set(xlabel="", title=name)
    fig.tight_layout()
    return fig


def plot_rule_comparison(comparison: pd.DataFrame, chosen: str):
    """Each fusion rule's cross-validated macro-F1 with its paired standard error as a bar, and the
    one-SE line (the best candidate's score minus one SE): a rule's lead read against its noise."""
    fig, ax = plt.subplots(figsize=(6.5, 3))
    order = comparison.index[::-1]
    colours = ["tab:orange" if rule == chosen else "tab:blue" for rule in order]
    ax.barh(order, comparison.loc[order, "macro_f1"], xerr=comparison.loc[order, "se"], color=colours, capsize=3)
    ax.set(xlabel="macro-F1, out of fold (bar: paired SE)", xlim=(0, 1), title=f"orange: the shipped rule ({chosen})")
    fig.tight_layout()
    return fig


def plot_presence(conf: pd.Series, labels: pd.Series, threshold: float | None):
    """Stage 1's lesion confidence for normal and lesion scans, with the presence threshold the
    fused rule turns at: how well "a lesion was found" alone separates them."""
    fig, ax = plt.subplots(figsize=(6, 3))
    for name, part in (("normal", conf[labels == "normal"]), ("benign or malignant", conf[labels != "normal"])):
        ax.hist(part, bins=np.linspace(0, 1, 26), alpha=0.6, label=name, density=True)
    if threshold is not None:
        ax.axvline(threshold, color="k", ls=":", label="presence threshold")
    ax.set(xlabel="segmenter's highest pixel probability", ylabel="density", title="'A lesion was found', out of fold")
    ax.legend()
    return fig
