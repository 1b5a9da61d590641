"""Stage 1 as it ships: the K fold U-Nets of a run, loaded in fold order, and the mean of their
lesion probabilities (each never saw a test image), as nnU-Net ensembles its fold models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch.nn as nn

from busi_utils.core.errors import RunFolderError
from busi_utils.stage1.folds import fold_numbers
from busi_utils.stage1.predict import load_segmenter, predict_masks, score_masks


def ensemble_files(paths, manifest: pd.DataFrame | None = None) -> list[Path]:
    """The files of the K fold U-Nets of a run, in fold order (folds from the split manifest)."""
    manifest = paths.read_split() if manifest is None else manifest
    return [paths.fold_unet(k) for k in fold_numbers(manifest)]


def load_ensemble(paths, manifest: pd.DataFrame | None = None) -> list[tuple[nn.Module, dict]]:
    """The K fold U-Nets of a run, ``(model, info)`` in fold order: stage 1 as it ships."""
    members = []
    for path in ensemble_files(paths, manifest):
        if not path.exists():
            raise RunFolderError(f"{path}: missing; run notebooks 02-03 first")
        members.append(load_segmenter(path))
        if members[-1][1]["recipe"] != members[0][1]["recipe"]:
            raise RunFolderError(
                f"{path}: trained with another recipe than {paths.fold_unet(0).name}; an ensemble shares one"
                " recipe (re-run notebook 03)"
            )
    return members


def predict_ensemble(members: Sequence[tuple[nn.Module, dict]], images: np.ndarray) -> np.ndarray:
    """The mean of the members' lesion probabilities (each predicts as its recipe says, flip TTA
    included), as nnU-Net ensembles its fold models."""
    return np.mean([predict_masks(model, info, images) for model, info in members], axis=0).astype(np.float32)


def member_scores(members: Sequence[tuple[nn.Module, dict]], images: np.ndarray, truths: np.ndarray) -> pd.DataFrame:
    """Mean Dice of each member alone and of their mean (:func:`predict_ensemble`) on the same
    images: what the ensemble buys over any single fold U-Net."""
    rows = [
        {
            "model": f"fold-{k} U-Net alone",
            "dice": float(score_masks(predict_masks(m, i, images), truths)["dice"].mean()),
        }
        for k, (m, i) in enumerate(members)
    ]
    ensemble = score_masks(predict_ensemble(members, images), truths)["dice"].mean()
    return pd.DataFrame(rows + [{"model": f"mean of the {len(members)}", "dice": float(ensemble)}])
