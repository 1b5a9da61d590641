"""Pictures of the course's processes, drawn by code so that they follow the code: the two-stage
pipeline (chapter 1 and the README), a U-Net with its skips, from the shapes a real forward pass
produced (chapter 2), and a recipe's learning-rate schedule, from fastai's own schedule
functions (chapters 2 and 4)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

from busi_utils.core.schedule import phases

PIPELINE = [  # (label, detail, colour): the boxes of the two-stage pipeline, left to right
    ("scan", "grayscale\nultrasound", "#d9d9d9"),
    ("stage 1: U-Net", "where is the lesion?\nfold ensemble", "#9ecae1"),
    ("predicted mask", "out-of-fold for\ntraining images", "#c6dbef"),
    ("stage 2: two views", "whole scan + mask\nlesion crop", "#fdd0a2"),
    ("fused decision", "a rule chosen out\nof fold, calibrated", "#fdae6b"),
    ("answer", "normal / benign /\nmalignant + shape", "#d9d9d9"),
]


def _box(ax, x: float, y: float, w: float, h: float, text: str, colour: str, size: int = 9) -> None:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", fc=colour, ec="#444444", lw=1))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float], style: str = "-|>", **kw) -> None:
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=12, color="#444444", lw=1.2, **kw))


def plot_pipeline(ax=None):
    """The two-stage pipeline: a scan, the U-Net's mask, the classifier's two views, the fused
    and calibrated answer, with the shape evidence and "a lesion was found" read off the mask."""
    if ax is None:
        _, ax = plt.subplots(figsize=(13, 2.9))
    w, h, gap = 1.7, 1.0, 0.45
    for k, (label, detail, colour) in enumerate(PIPELINE):
        x = k * (w + gap)
        _box(ax, x, 0.9, w, h, f"{label}\n\n{detail}", colour)
        if k:
            _arrow(ax, (x - gap, 1.4), (x, 1.4))
    mask_x, fused_x, answer_x = (k * (w + gap) + w / 2 for k in (2, 4, 5))
    text = "read off the mask: was a lesion found (the U-Net's confidence)?\nand its shape (BI-RADS-like), shown with the answer"
    _box(ax, mask_x - 0.3, -0.25, answer_x - mask_x + 0.6, 0.6, text, "#e5f5e0", 8)
    _arrow(ax, (mask_x, 0.9), (mask_x, 0.35))
    _arrow(ax, (fused_x, 0.35), (fused_x, 0.9))
    _arrow(ax, (answer_x, 0.35), (answer_x, 0.9))
    ax.set_xlim(-0.2, len(PIPELINE) * (w + gap))
    ax.set_ylim(-0.4, 2.1)
    ax.set_axis_off()
    ax.set_title("The two-stage pipeline: where is the lesion, then what is it")
    return ax


def plot_unet(down: list[tuple[int, int]], up: list[tuple[int, int]], ax=None):
    """A U-Net as boxes: ``down`` and ``up`` are ``(channels, side)`` of each level's output, as
    a forward pass printed them; a skip joins each encoder level to the decoder level of its size."""
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4.2))
    n, w, h = len(down), 0.9, 0.7
    y = lambda level: n - 1 - level  # full resolution on top
    x_down = [1.2 * k for k in range(n)]
    x_up = [x_down[-1] + 1.2 * (k + 1) for k in range(len(up))]
    for k, (c, side) in enumerate(down):
        _box(ax, x_down[k], y(k), w, h, f"{c} ch\n{side}x{side}", "#9ecae1", 8)
        if k:
            _arrow(ax, (x_down[k - 1] + w / 2, y(k - 1)), (x_down[k] + w / 2, y(k) + h))
    prev = (x_down[-1] + w / 2, y(n - 1) + h)
    for k, (c, side) in enumerate(up):
        level = n - 2 - k
        _box(ax, x_up[k], y(level), w, h, f"{c} ch\n{side}x{side}", "#fdd0a2", 8)
        _arrow(ax, prev, (x_up[k] + w / 2, y(level)))
        _arrow(ax, (x_down[level] + w, y(level) + h / 2), (x_up[k], y(level) + h / 2), ls="--")
        prev = (x_up[k] + w / 2, y(level) + h)
    ax.text(x_down[0], n + 0.05, "encoder: convolve, then halve the size", fontsize=9)
    ax.text(x_up[-1] + w, n + 0.05, "decoder: double the size, join the skip, convolve", fontsize=9, ha="right")
    ax.set_xlim(-0.3, x_up[-1] + 1.2)
    ax.set_ylim(-0.4, n + 0.5)
    ax.set_axis_off()
    ax.set_title("The U-Net of this profile (dashed: skip connections carrying fine detail across)")
    return ax


def schedule(recipe: dict, n_batches: int = 100) -> dict[str, np.ndarray]:
    """The learning rate per batch of a recipe, for the body (pretrained layers) and the head,
    from fastai's own one-cycle functions; a frozen phase (``fine_tune``) first when the recipe
    has one, with the body's rate 0 there."""
    from fastai.callback.schedule import (
        combined_cos,  # fastai: loaded where used (slow import)
    )

    body, head, frozen = [], [], 0
    for ph in phases(recipe, float(recipe["lr"])):
        steps = ph["epochs"] * n_batches
        f = combined_cos(ph["pct_start"], 1 / ph["div"], 1.0, 1 / 1e5)  # fastai's div_final: 1e5
        shape = np.array([f(i / steps) for i in range(steps)])
        head += list(ph["head"] * shape)
        body += list((ph["body"] or 0.0) * shape)
        frozen += steps if ph["body"] is None else 0
    return {"head": np.array(head), "body": np.array(body), "frozen_batches": frozen}


def plot_schedule(recipe: dict, title: str, n_batches: int = 100, ax=None):
    """:func:`schedule` drawn: one line for the head, one for the pretrained body, epochs on x."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    s = schedule(recipe, n_batches)
    epochs = np.arange(len(s["head"])) / n_batches
    if recipe.get("pretrained"):
        ax.plot(epochs, s["head"], label="head (new layers)")
        ax.plot(epochs, s["body"], label="body (pretrained layers)")
    else:
        ax.plot(epochs, s["head"], label="all layers (trained from scratch)")
    if s["frozen_batches"]:
        ax.axvspan(0, s["frozen_batches"] / n_batches, color="#dddddd", label="frozen body")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return ax


def plot_crop_origin(scan: np.ndarray, box: tuple[int, int, int, int], window: tuple[int, int, int, int], crop):
    """Where the lesion view comes from: the scan with the kept region's box (red) and the square
    window around it (yellow), beside the crop the classifier reads."""
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
    axes[0].imshow(scan, cmap="gray", vmin=0, vmax=1)
    for (y0, y1, x0, x1), colour, name in ((box, "red", "lesion box"), (window, "gold", "crop window")):
        axes[0].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec=colour, lw=2, label=name))
    axes[0].legend(loc="lower right", fontsize=7)
    axes[0].set_title("scan (at twice the classifier's size)", fontsize=9)
    axes[1].imshow(crop, cmap="gray", vmin=0, vmax=1)
    axes[1].set_title("the lesion view", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    return fig
