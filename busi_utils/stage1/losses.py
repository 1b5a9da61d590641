"""Stage 1's losses and metrics on logits: soft Dice (+ BCE or focal) to train, Dice and IoU to watch."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the sigmoid probabilities, per image, averaged: overlap, whatever the lesion size."""
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    total = prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    return (1 - (2 * inter + eps) / (total + eps)).mean()


def _as_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return target.reshape(logits.shape).float()


class DiceBCELoss(nn.Module):
    """Soft Dice (overlap; insensitive to the lesion being small) + BCE (pixel-wise, stable gradients)."""

    activation = staticmethod(torch.sigmoid)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = _as_target(logits, target)
        return soft_dice_loss(logits, t) + F.binary_cross_entropy_with_logits(logits, t)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        return (x > 0.5).long()


class DiceFocalLoss(DiceBCELoss):
    """Soft Dice + focal loss (gamma 2): down-weights the many easy background pixels."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = _as_target(logits, target)
        bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
        focal = ((1 - torch.exp(-bce)) ** self.gamma * bce).mean()
        return soft_dice_loss(logits, t) + focal


LOSSES = {"dice_bce": DiceBCELoss, "dice_focal": DiceFocalLoss}


def _batch_scores(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred = (logits > 0).flatten(1).float()
    t = target.reshape(pred.shape[0], -1).float()
    inter = (pred * t).sum(1)
    total = pred.sum(1) + t.sum(1)
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(total), 2 * inter / total.clamp(min=1))
    iou = torch.where(empty, torch.ones_like(total), inter / (total - inter).clamp(min=1))
    return dice, iou


def dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-image foreground Dice at threshold 0.5 (fastai metric)."""
    return _batch_scores(logits, target)[0].mean()


def iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-image foreground IoU at threshold 0.5 (fastai metric)."""
    return _batch_scores(logits, target)[1].mean()
