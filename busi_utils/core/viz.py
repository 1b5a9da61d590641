"""Plots and picture grids shared by the notebooks (so no notebook copies another's)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import (
    ListedColormap,
)

from busi_utils.core.config import CLASSES
from busi_utils.core.images import overlay as overlay  # re-exported: the chapters call viz.overlay

PALETTE = {"normal": "#4c72b0", "benign": "#55a868", "malignant": "#c44e52"}


def show_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
    ncols: int = 4,
    size: float = 3.0,
    cmap: str = "gray",
):
    """Images in a grid with titles; returns the figure."""
    n = len(images)
    nrows = max(1, int(np.ceil(n / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, title in zip(axes.flat, images, titles or [""] * n):
        ax.imshow(img, cmap=cmap if img.ndim == 2 else None, vmin=0 if img.ndim == 2 else None)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_class_balance(index: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(5, 3))
    counts = index["label"].value_counts().reindex(CLASSES)
    sns.barplot(x=counts.index, y=counts.values, hue=counts.index, palette=PALETTE, ax=ax, legend=False)
    for i, v in enumerate(counts.values):
        ax.text(i, v, str(v), ha="center", va="bottom")
    ax.set(ylabel="images", title="Class balance")
    return fig


def plot_sizes(index: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(5, 4))
    sns.scatterplot(
        data=index, x="width", y="height", hue="label", hue_order=CLASSES, palette=PALETTE, alpha=0.6, s=15, ax=ax
    )
    ax.set(title="Image sizes (pixels)")
    return fig


def plot_mask_coverage(index: pd.DataFrame):
    """Lesion area as a fraction of the image, per class (normal: all zero)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    lesion = index[index["label"] != "normal"]
    sns.boxplot(
        data=lesion,
        x="label",
        y="mask_fraction",
        order=[c for c in CLASSES if c != "normal"],
        hue="label",
        palette=PALETTE,
        ax=ax,
    )
    ax.set(ylabel="lesion area / image area", xlabel="", title="Mask coverage (lesion size)")
    return fig


def plot_split_heatmap(table: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(5, 0.4 * len(table) + 1))
    sns.heatmap(table, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.set(title="Images per split / fold and class", xlabel="", ylabel="")
    return fig


def plot_learning_curves(history: pd.DataFrame, title: str = "Learning curves"):
    """Training / validation loss and validation Dice per epoch (fastai's recorder values)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    a.plot(history["epoch"], history["train_loss"], label="train")
    if "valid_loss" in history and history["valid_loss"].notna().any():
        a.plot(history["epoch"], history["valid_loss"], label="validation")
    a.set(xlabel="epoch", ylabel="loss", title=title)
    a.legend()
    for col in ("dice", "iou"):
        if col in history and history[col].notna().any():
            b.plot(history["epoch"], history[col], marker="o", label=col)
    b.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
    b.legend()
    fig.tight_layout()
    return fig


def show_seg_cases(images, truths, probs, titles, threshold: float = 0.5):
    """One row per case: image, ground truth, predicted probability, overlay (truth green, prediction red)."""
    cells, names = [], []
    for img, t, p, title in zip(images, truths, probs, titles):
        both = np.repeat((img.astype(np.float32) / 255)[..., None], 3, axis=2) * 0.7
        both[..., 1] = np.maximum(both[..., 1], t * 0.9)
        both[..., 0] = np.maximum(both[..., 0], (p >= threshold) * 0.9)
        cells += [img, t.astype(float), p, both]
        names += [title, "truth", "prediction", "overlay (truth green, pred red)"]
    return show_grid(cells, names, ncols=4, size=2.6)


def plot_distributions(df: pd.DataFrame, value: str, by: str, title: str, order=None):
    """Box + strip plot of ``value`` per ``by`` group: distributions, not just means."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sns.boxplot(data=df, x=by, y=value, order=order, ax=ax, showfliers=False, color="#dddddd")
    sns.stripplot(data=df, x=by, y=value, order=order, ax=ax, size=2.5, alpha=0.5)
    ax.set(title=title, xlabel="")
    return fig


def plot_benchmark_curves(
    history: pd.DataFrame, metric: str, names: Sequence[str], title: str, labels: dict | None = None
):
    """Validation ``metric`` per epoch for several benchmark runs side by side (one line each;
    the frozen first phase of a fine-tuned run drawn dashed): how fast each one learns."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for name in names:
        h = history[history["name"] == name].sort_values("epoch")
        if not len(h):
            continue
        (line,) = ax.plot(h["epoch"] + 1, h[metric], marker="o", ms=3, label=(labels or {}).get(name, name))
        if "phase" in h and (h["phase"] == "frozen").any():
            frozen = h[h["phase"] == "frozen"]
            ax.plot(frozen["epoch"] + 1, frozen[metric], marker="s", ms=6, ls="", color=line.get_color(), mfc="white")
    ax.set(xlabel="epoch (hollow square: encoder frozen)", ylabel=f"validation {metric}", title=title, ylim=(0, 1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_benchmark_spread(runs: pd.DataFrame, metric: str, title: str):
    """One row per candidate: every (fold, seed) run as a dot (shape: seed), the mean as a bar,
    plus or minus one SD as a line. Shows whether candidates differ by more than runs of one
    candidate do."""
    order = runs.groupby("name")[metric].mean().sort_values().index.tolist()
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(order) + 1.2))
    markers = dict(zip(sorted(runs["seed"].unique()), "os^Dv"))
    for y, name in enumerate(order):
        r = runs[runs["name"] == name]
        ax.errorbar(r[metric].mean(), y, xerr=r[metric].std(), fmt="|", ms=18, color="black", capsize=4)
        for seed, rs in r.groupby("seed"):
            ax.scatter(
                rs[metric], [y] * len(rs), marker=markers[seed], alpha=0.7, label=f"seed {seed}" if y == 0 else None
            )
    ax.set(yticks=range(len(order)), yticklabels=order, xlabel=metric.replace("_", " "), title=title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def show_first_filters(weight, title: str, n: int = 32, ax=None):
    """The first convolution's filters (out, in, k, k), summed over input channels, as a grid of
    small gray squares: learned edge and blob detectors look structured, random ones like noise."""
    w = weight.detach().sum(1)[:n].numpy()
    cols = 8
    rows = int(np.ceil(len(w) / cols))
    k = w.shape[-1]
    canvas = np.full((rows * (k + 1) - 1, cols * (k + 1) - 1), np.nan)
    for i, f in enumerate(w):
        f = (f - f.min()) / (np.ptp(f) + 1e-8)
        r, c = divmod(i, cols)
        canvas[r * (k + 1) : r * (k + 1) + k, c * (k + 1) : c * (k + 1) + k] = f
    if ax is None:
        _, ax = plt.subplots(figsize=(4, rows * 0.6 + 0.4))
    ax.imshow(canvas, cmap="gray")
    ax.set(title=title, xticks=[], yticks=[])
    return ax


def plot_crossfit_diagram(n_folds: int):
    """Cross-fitting as a picture: one row per U-Net, one column per fold of the training pool
    plus the test split; each cell says whether that model trains on it, predicts it, or never
    sees it. Every training image is predicted by exactly one model that did not train on it;
    the test split by all K of them (their mean), none of which trained on it."""
    rows = [f"fold-{k} U-Net" + (" (ch. 2)" if k == 0 else "") for k in range(n_folds)]
    cols = [f"fold {k}" for k in range(n_folds)] + ["test (mean of all)"]
    grid = np.zeros((len(rows), len(cols)), dtype=int)  # 0 unseen, 1 trains on, 2 predicts
    for k in range(n_folds):
        grid[k, :n_folds] = 1
        grid[k, k] = 2
        grid[k, n_folds] = 2
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2, 0.5 * len(rows) + 1))
    ax.imshow(grid, cmap=ListedColormap(["#f2f2f2", "#9ecae1", "#fd8d3c"]), vmin=0, vmax=2)
    for (r, c), v in np.ndenumerate(grid):
        ax.text(c, r, ("", "train", "predict")[v], ha="center", va="center", fontsize=8)
    ax.set(
        xticks=range(len(cols)),
        xticklabels=cols,
        yticks=range(len(rows)),
        yticklabels=rows,
        title="Who predicts whom: each column's masks come from its orange cell(s)",
    )
    ax.tick_params(length=0)
    fig.tight_layout()
    return fig


def plot_paired_differences(
    paired: dict, per_seed: pd.DataFrame, xlabel: str, title: str = "Is the mask worth it?", unit: str = "seed"
):
    """One row per metric: the paired-bootstrap difference with its 95% interval (black) and
    the same difference for each seed of the seed study (orange dots). Returns the figure."""
    keys = list(paired)
    fig, ax = plt.subplots(figsize=(6, 3))
    for j, k in enumerate(keys):
        value, (lo, hi) = paired[k]["value"], paired[k]["ci95"]
        ax.errorbar(value, j, xerr=[[value - lo], [hi - value]], fmt="o", color="black", capsize=3)
        ax.scatter(
            per_seed[k], [j + 0.2] * len(per_seed), color="tab:orange", s=14, label=f"one {unit}" if j == 0 else None
        )
    ax.axvline(0, color="grey", lw=0.8)
    ax.set(yticks=range(len(keys)), yticklabels=keys, xlabel=xlabel, title=title)
    ax.legend(loc="lower right", fontsize=8)
    return fig
