"""Which images each U-Net trains on and watches: the training pool's images outside its fold,
never a test image. By default only lesion images; with the recipe's ``normals: true`` the
normal scans too, with their empty masks, so that the U-Net learns to paint nothing where there
is nothing (the question "is there a lesion?" then rests on evidence that travels)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from busi_utils.core.errors import LeakageError


def lesion_train_ids(manifest: pd.DataFrame, exclude_fold: int | None = None, normals: bool = False) -> list[str]:
    """Training-pool images with real lesions (benign, malignant), optionally leaving one fold out,
    and with ``normals`` the pool's normal scans as well (empty targets). Never a hold-out test image."""
    m = manifest[(manifest["split"] == "train") & (normals | (manifest["label"] != "normal"))]
    if exclude_fold is not None:
        m = m[m["fold"] != exclude_fold]
    return m["image_id"].tolist()


def fold_seed(seed: int, fold: int) -> int:
    """The seed of fold ``fold``'s U-Net: each fold model starts from its own random numbers."""
    return int(seed) + 1 + int(fold)


def fold_numbers(manifest: pd.DataFrame) -> list[int]:
    """The cross-fitting folds of the training pool, in order."""
    return sorted(int(f) for f in manifest.loc[manifest["split"] == "train", "fold"].unique())


def fold_ids(manifest: pd.DataFrame, fold: int, normals: bool = False) -> tuple[list[str], list[str]]:
    """``(training images, watched images)`` of fold ``fold``'s U-Net: the training pool's lesion
    images outside the fold (and its normal scans, with ``normals``), and the fold's own lesion
    images (scored per epoch, never chosen on)."""
    held = manifest[(manifest["split"] == "train") & (manifest["fold"] == fold) & (manifest["label"] != "normal")]
    return lesion_train_ids(manifest, exclude_fold=fold, normals=normals), held["image_id"].tolist()


def check_training_items(manifest: pd.DataFrame, train_ids: Sequence[str], normals: bool = False) -> None:
    """Raise if a hold-out test image, an excluded image or (unless the recipe trains on
    ``normals``) a normal image is among the segmentation training items."""
    m = manifest.set_index("image_id").loc[list(train_ids)]
    bad = m[(m["split"] != "train") | ((m["label"] == "normal") & (not normals))]
    if len(bad):
        raise LeakageError(
            f"{len(bad)} training item(s) must not be trained on, e.g. {bad.index[0]!r} ({bad['split'].iloc[0]}, {bad['label'].iloc[0]})"
        )
