"""Segmentation and classification metrics, with the conventions written down.

Empty-mask convention (Dice/IoU per image): if truth and prediction are both empty the
score is 1 (nothing to find, nothing found); if only one is empty it is 0.
"""
from __future__ import annotations

import numpy as np


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks, with the empty-mask convention above."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    inter = np.logical_and(pred, truth).sum()
    total = pred.sum() + truth.sum()
    if total == 0:
        return 1.0, 1.0
    union = total - inter
    return float(2 * inter / total), float(inter / union)


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    return dice_iou(pred, truth)[0]


def iou_score(pred: np.ndarray, truth: np.ndarray) -> float:
    return dice_iou(pred, truth)[1]
