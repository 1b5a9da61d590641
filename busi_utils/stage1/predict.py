"""A trained U-Net as a file and as a predictor: save / load (weights, the recipe that rebuilds
the network, normalisation, the training list the leak check reads), lesion probabilities with
the recipe's flip TTA, and per-image Dice / IoU."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from busi_utils.core import tta
from busi_utils.core.files import load_checkpoint, save_checkpoint
from busi_utils.core.layout import channels_last
from busi_utils.core.scores import dice_iou
from busi_utils.stage1.unet import segmenter_from_recipe


def save_segmenter(path: Path, model: nn.Module, info: dict) -> None:
    """Weights + everything needed to rebuild and audit the model, written atomically."""
    save_checkpoint(path, model.state_dict(), info)


def load_segmenter(path: Path) -> tuple[nn.Module, dict]:
    """Rebuild the exported U-Net (no download, no pickled code)."""
    state, info = load_checkpoint(path)
    model = segmenter_from_recipe(info["recipe"], pretrained=False)  # the saved weights follow
    model.load_state_dict(state)
    return model.eval(), info


@torch.no_grad()
def predict_probs(
    model: nn.Module, images: np.ndarray, stats: Sequence[float], bs: int = 32, flip: bool = False
) -> np.ndarray:
    """Lesion probabilities (N, S, S) float32 for resized grayscale images (N, S, S) uint8.

    ``flip``: average with the prediction on the left-right mirrored image (test-time
    augmentation; mirroring is one of the training augmentations, so both views are familiar).
    Puts ``model`` in eval mode and channels-last layout, in place (:mod:`busi_utils.core.layout`).
    """
    model = channels_last(model.eval())
    out = []
    for k in range(0, len(images), bs):
        x = torch.from_numpy(np.array(images[k : k + bs])).float().div(255.0).unsqueeze(1)
        x = (x - stats[0]) / stats[1]
        p = tta.averaged(lambda z: torch.sigmoid(model(z)), x, 2 if flip else 1, spatial=True)
        out.append(p.squeeze(1).numpy())
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], np.float32)


def predict_masks(model: nn.Module, info: dict, images: np.ndarray) -> np.ndarray:
    """Lesion probabilities the way the model's recipe says to predict them (normalisation,
    flip TTA): the one inference path of notebooks 02/03, the mask manifest and the Predictor."""
    return predict_probs(model, images, info["stats"], flip=bool(info["recipe"].get("tta_flip", False)))


def score_masks(probs: np.ndarray, truths: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """Per-image Dice and IoU of thresholded probabilities against boolean truths."""
    rows = [dice_iou(p >= threshold, t) for p, t in zip(probs, truths)]
    return pd.DataFrame(rows, columns=["dice", "iou"])
