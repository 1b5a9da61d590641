"""A few labelled patients of the new site: who is drawn, and what is tuned on them.

How many labelled patients buy how much is a learning curve: for each ``k``, several draws of
``k`` development patients (:func:`draw_patients`), each adapting the pipeline on its patients
alone: stage 2's decision (where "a lesion" begins), its temperature and its referral cutoff
are refitted on their scans (:mod:`busi_utils.evaluation.adaptation`). Stage 1 can be fine-tuned
on their masks (:func:`finetune_segmenter`: a few dozen steps at a small rate, only the layers
named, optionally with the home site's scans *rehearsed* in every batch so that it does not
forget them); chapter 8 measures whether that helps before anything ships it."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from busi_utils.core.errors import SiteError
from busi_utils.stage1.losses import DiceBCELoss

# which parameters each choice trains, by the top-level names of the course's U-Nets
# (LightUNet: down / up / head; Lite0UNet: encoder / decoder / head)
LAYERS = {"all": None, "encoder": ("down", "encoder"), "decoder": ("up", "decoder", "head")}


def draw_patients(pool: Sequence[str], k: int, draws: int, seed: int) -> list[list[str]]:
    """``draws`` seeded draws of ``k`` patients from ``pool`` (without replacement within a
    draw); one draw when ``k`` is the whole pool. ``k`` larger than the pool is an error."""
    pool = sorted(map(str, pool))
    if not 1 <= k <= len(pool):
        raise SiteError(f"k={k}: the development pool has {len(pool)} patients (1 <= k <= {len(pool)})")
    if k == len(pool):
        return [pool]
    rng = np.random.default_rng(seed)
    return [sorted(rng.choice(pool, k, replace=False).tolist()) for _ in range(draws)]


def trainable(model: nn.Module, layers: str) -> list[nn.Parameter]:
    """The parameters ``layers`` names (:data:`LAYERS`); every other one is frozen."""
    if layers not in LAYERS:
        raise ValueError(f"unknown layers {layers!r}: {', '.join(LAYERS)}")
    names = LAYERS[layers]
    chosen = []
    for name, p in model.named_parameters():
        p.requires_grad_(names is None or name.split(".")[0] in names)
        if p.requires_grad:
            chosen.append(p)
    if not chosen:
        raise ValueError(f"{type(model).__name__} has no {layers} layers")
    return chosen


def _tensors(images: np.ndarray, masks: np.ndarray, stats: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 scans, normalised as the U-Net was trained, and their masks as 0/1 targets."""
    x = (torch.from_numpy(np.asarray(images, np.float32) / 255.0)[:, None] - stats[0]) / stats[1]
    return x, torch.from_numpy((np.asarray(masks) > 0).astype(np.float32))[:, None]


def finetune_segmenter(
    unet: nn.Module,
    stats: tuple[float, float],
    images: np.ndarray,
    masks: np.ndarray,
    steps: int = 60,
    lr: float = 3e-4,
    batch_size: int = 16,
    layers: str = "all",
    seed: int = 0,
    rehearse: tuple[np.ndarray, np.ndarray] | None = None,
) -> nn.Module:
    """A copy of ``unet`` tuned on the site's labelled scans ``images`` (N, S, S) uint8 with
    their ``masks`` (N, S, S; empty for normal scans): Adam, Dice + BCE as in training, random
    mirror images. The model stays in eval mode, so batch norm keeps the statistics it came with
    (the run's, or a site's after :func:`~busi_utils.adapt.batchnorm.adapt_batchnorm`): a batch
    of a few scans is too few to estimate them. ``rehearse``: the home site's training scans and
    masks; half of every batch is drawn from them (the rest of the batch when the site has fewer
    scans than half a batch), so the few new scans cannot pull the network away from everything
    it learned at home (catastrophic forgetting)."""
    given = {"site": (images, masks), **({"home": rehearse} if rehearse is not None else {})}
    for what, (x, y) in given.items():
        if len(x) == 0 or len(x) != len(y):
            raise SiteError(f"fine-tuning needs {what} scans with their masks: {len(x)} scans, {len(y)} masks")
    tuned = copy.deepcopy(unet).eval()
    params = trainable(tuned, layers)
    opt = torch.optim.Adam(params, lr=lr)
    loss_fn = DiceBCELoss()
    x, y = _tensors(images, masks, stats)
    home = _tensors(*rehearse, stats) if rehearse is not None else None
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        n_site = min(batch_size // 2 if home is not None else batch_size, len(x))
        pick = torch.randint(len(x), (n_site,), generator=gen)
        xb, yb = x[pick], y[pick]
        if home is not None:
            back = torch.randint(len(home[0]), (batch_size - n_site,), generator=gen)
            xb, yb = torch.cat([xb, home[0][back]]), torch.cat([yb, home[1][back]])
        flip = torch.rand(len(xb), generator=gen) < 0.5
        xb, yb = (
            torch.where(flip[:, None, None, None], xb.flip(-1), xb),
            torch.where(flip[:, None, None, None], yb.flip(-1), yb),
        )
        opt.zero_grad()
        loss_fn(tuned(xb), yb).backward()
        opt.step()
    for p in tuned.parameters():
        p.requires_grad_(True)
    return tuned.eval()
