"""Stage 2's inputs (:data:`CHANNELS`), all from the stored predicted masks (out-of-fold for
training-pool images, the fold-U-Net ensemble's for test images: :mod:`busi_utils.stage1.oof`):

=======================  ===================================  ==============================
input                    channels                             role
=======================  ===================================  ==============================
``image+pred_mask``      scan, predicted mask                 the whole-scan view (method)
``lesion_crop``          a crop of the scan placed by the     the lesion view (method)
                         predicted mask
``image_only``           scan                                 baseline
``image+gt_mask``        scan, ground-truth mask              leaky upper bound (a deployed
                                                              system never has this mask)
``mask_only``            predicted mask                       benchmarks only
=======================  ===================================  ==============================

:class:`VariantData` holds them for one run, with the split's labels and folds; the members'
probability tables are written and read here too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from busi_utils.core.config import CLASSES
from busi_utils.core.images import resize_prob
from busi_utils.core.runfolder import RunPaths
from busi_utils.data.preprocess import ArrayStore, resized_arrays
from busi_utils.stage1 import oof
from busi_utils.stage2.shape import lesion_crop

VARIANTS = ("image_only", "image+pred_mask", "lesion_crop", "mask_only", "image+gt_mask")


CHANNELS = {
    "image_only": ("image",),
    "image+pred_mask": ("image", "pred_mask"),
    "lesion_crop": ("crop",),
    "mask_only": ("pred_mask",),
    "image+gt_mask": ("image", "gt_mask"),
}


CROP_SCALE = 2.2  # the crop's side is 2.2 times the longer side of the lesion's box (context around it)


def crop_source_size(size: int) -> int:
    """The scan resolution crops are cut from: twice the classifier's input, so a lesion a
    quarter of the scan wide still fills the crop with real pixels, not upsampled ones."""
    return 2 * int(size)


def build_inputs(
    variant: str,
    ids: Sequence[str],
    images: ArrayStore,
    pred_masks: dict[str, np.ndarray] | None,
    size: int,
    crop_images: ArrayStore | None = None,
) -> np.ndarray:
    """(N, C, S, S) float32 in [0, 1]: the channels of ``variant`` for each image id.

    ``pred_masks`` maps image id to its stored predicted mask (leakage-safe; see oof). The
    ground-truth channel is used only by the variant that says so in its name. ``crop``: the
    lesion-centred view placed by the predicted mask (:func:`busi_utils.stage2.shape.lesion_crop`), cut
    from ``crop_images`` (the scans at :func:`crop_source_size`).
    """
    out = np.zeros((len(ids), len(CHANNELS[variant]), size, size), dtype=np.float32)
    for n, i in enumerate(ids):
        for c, kind in enumerate(CHANNELS[variant]):
            if kind == "image":
                out[n, c] = images.image(i) / 255.0
            elif kind == "pred_mask":
                out[n, c] = resize_prob(pred_masks[i], size)
            elif kind == "crop":
                out[n, c] = lesion_crop(crop_images.image(i) / np.float32(255.0), pred_masks[i], size, CROP_SCALE)
            else:
                out[n, c] = images.mask(i)
    return out


def probs_frame(ids: Sequence[str], labels: Sequence[str], probs: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({"image_id": list(ids), "label": list(labels)})
    for k, c in enumerate(CLASSES):
        df[f"p_{c}"] = probs[:, k]
    df["pred"] = [CLASSES[k] for k in probs.argmax(1)]
    return df


def variant_file(variant: str) -> str:
    return variant.replace("+", "_plus_")


def masks_hash(pred_masks: dict[str, np.ndarray] | None) -> str:
    """Fingerprint of the predicted masks a classifier trained with: new masks (a retrained
    U-Net) mean a new classifier, never a stale one resumed from the run folder."""
    h = hashlib.sha256()
    for i in sorted(pred_masks or {}):
        h.update(i.encode())
        h.update(np.ascontiguousarray(pred_masks[i], dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


class VariantData:
    """Everything a variant trains and is tested on, built once per notebook run."""

    def __init__(
        self,
        paths: RunPaths,
        split: pd.DataFrame,
        images: ArrayStore,
        pred_masks: dict[str, np.ndarray],
        size: int,
        crop_images: ArrayStore | None = None,
    ):
        self.paths, self.split, self.images, self.pred_masks, self.size = paths, split, images, pred_masks, size
        self.crop_images = crop_images
        self.pool = split[split["split"] == "train"]
        self.train = self.pool[self.pool["fold"] != 0]
        self.valid = self.pool[self.pool["fold"] == 0]
        self.test = split[split["split"] == "test"]
        self.masks_hash = masks_hash(pred_masks)

    def inputs(self, variant: str, rows: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
        """The inputs of ``variant`` and the labels of ``rows`` (a part of the split table)."""
        x = build_inputs(variant, rows["image_id"].tolist(), self.images, self.pred_masks, self.size, self.crop_images)
        return x, rows["label"].astype(str).tolist()

    def arrays(self, variant: str, part: str) -> tuple[np.ndarray, list[str]]:
        """``part``: ``train`` (folds 1..K-1), ``valid`` (fold 0), ``test`` or ``pool``."""
        return self.inputs(variant, getattr(self, part))

    def fold_arrays(self, variant: str, fold: int):
        """``((x, y) outside fold k, (x, y) of fold k)`` of the training pool: one cross-fitted member's data."""
        return self.inputs(variant, self.pool[self.pool["fold"] != fold]), self.inputs(
            variant, self.pool[self.pool["fold"] == fold]
        )


def load_variant_data(
    paths: RunPaths, index: pd.DataFrame, split: pd.DataFrame, size: int, progress: bool = True
) -> VariantData:
    """The classifier's data for a run folder: images at ``size`` and the stored predicted masks
    of the training pool and the test split, after proving them leak-free (:mod:`busi_utils.stage1.oof`)."""
    manifest = oof.read_mask_manifest(paths)
    oof.check_leak_free(manifest, split, paths)  # refuse to train on masks that leak
    images = ArrayStore(resized_arrays(index, size, progress=progress))
    crops = ArrayStore(resized_arrays(index, crop_source_size(size), progress=progress))
    used = split[split["split"].isin(["train", "test"])]["image_id"].tolist()
    return VariantData(paths, split, images, dict(zip(used, oof.load_masks(paths, manifest, used))), size, crops)


def read_probs_file(path: Path) -> pd.DataFrame:
    """A saved probabilities table (``image_id, label, p_<class>..., pred``)."""
    return pd.read_csv(path, keep_default_na=False)
