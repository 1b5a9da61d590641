"""Stage 1, *where?*: a U-Net that segments the lesion.

The pieces, in the order a reader meets them in notebook 02. This module holds the data and the
training; the others live beside it in ``busi_utils/stage1/`` and are gathered here, so a chapter
calls every one as ``seg.<name>``:

* :func:`seg_dataloaders` — a fastai ``DataBlock`` (image + mask) over resized arrays, with
  :mod:`busi_utils.stage1.augment`'s ultrasound augmentations applied identically to image and mask;
* :func:`build_segmenter` (``unet``) — ``light`` (a small U-Net trained from scratch: the cpu profile's
  choice, measured in notebook 02), ``lite0`` (an ImageNet-pretrained EfficientNet-Lite0 encoder
  from :mod:`busi_utils.stage1.pretrained` under a light decoder), ``attention`` (the same with attention gates on the skips) or
  ``resnet18``/``resnet34`` (fastai's ``DynamicUnet``, ImageNet weights only when already in the
  local torch cache);
* :class:`DiceBCELoss` / :class:`DiceFocalLoss` and the Dice / IoU metrics (``losses``);
* :func:`train_segmenter` — one-cycle schedule (fastai's ``fine_tune`` for a pretrained
  encoder: :mod:`busi_utils.stage1.training`), seeded, last epoch kept; :func:`suggest_lr` runs
  fastai's learning-rate finder beside it, for comparison;
* :func:`train_fold` — the recipe applied to one cross-fitting fold: every U-Net of the course
  (notebook 02's fold 0, notebook 03's K folds) comes from this one function;
* :func:`fold_ids` and the other fold rules (``folds``): what each U-Net trains on and watches;
* :func:`load_ensemble` / :func:`predict_ensemble` (``ensemble``) — stage 1 as it ships: the mean of the K fold
  U-Nets' probabilities (each never saw a test image);
* :func:`save_segmenter` / :func:`load_segmenter` / :func:`predict_masks` (``predict``) — a portable export: weights, the recipe that
  rebuilds the network, normalisation, and the list of training images (the leak check reads it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from busi_utils.core.files import atomic_write_text
from busi_utils.core.runfolder import RunPaths
from busi_utils.data.preprocess import ArrayStore
from busi_utils.stage1 import training
from busi_utils.stage1.augment import ultrasound_segmentation
from busi_utils.stage1.ensemble import ensemble_files, load_ensemble, member_scores, predict_ensemble
from busi_utils.stage1.folds import check_training_items, fold_ids, fold_numbers, fold_seed, lesion_train_ids
from busi_utils.stage1.losses import LOSSES, DiceBCELoss, DiceFocalLoss, dice, iou, soft_dice_loss
from busi_utils.stage1.predict import load_segmenter, predict_masks, predict_probs, save_segmenter, score_masks
from busi_utils.stage1.training import Trained
from busi_utils.stage1.unet import (
    AttentionGate,
    ConvBlock,
    LightUNet,
    Lite0UNet,
    build_segmenter,
    describe_recipe,
    encoder_decoder_split,
    imagenet_weights_cached,
    n_params,
    segmenter_from_recipe,
)

__all__ = [  # this module's own names, and those it gathers from unet, losses, predict, folds and ensemble (chapters reach them as seg.<name>)
    "AttentionGate",
    "build_segmenter",
    "check_training_items",
    "ConvBlock",
    "describe_recipe",
    "dice",
    "DiceBCELoss",
    "DiceFocalLoss",
    "encoder_decoder_split",
    "ensemble_files",
    "fold_ids",
    "fold_numbers",
    "fold_seed",
    "get_or_train",
    "ids_hash",
    "imagenet_weights_cached",
    "info_fingerprint",
    "iou",
    "lesion_train_ids",
    "LightUNet",
    "Lite0UNet",
    "load_ensemble",
    "load_segmenter",
    "LOSSES",
    "member_scores",
    "model_fingerprint",
    "n_params",
    "norm_stats",
    "predict_ensemble",
    "predict_masks",
    "predict_probs",
    "save_segmenter",
    "score_masks",
    "seg_dataloaders",
    "segmenter_from_recipe",
    "soft_dice_loss",
    "suggest_lr",
    "train_fold",
    "train_segmenter",
]

# --------------------------------------------------------------------------- data


def trains_on_normals(recipe: dict) -> bool:
    """Whether a stage-1 recipe trains on the normal scans too (``normals: true``; empty targets)."""
    return bool(recipe.get("normals", False))


def norm_stats(store: ArrayStore, ids: Sequence[str]) -> tuple[float, float]:
    """Mean and std of the training images (0-1 scale): normalisation from training data only."""
    px = np.stack([store.image(i) for i in ids]).astype(np.float32) / 255.0
    return float(px.mean()), float(px.std())


def seg_dataloaders(
    store: ArrayStore,
    train_ids: Sequence[str],
    valid_ids: Sequence[str],
    size: int,
    bs: int,
    stats: tuple[float, float],
    augment: bool = True,
    scanner: bool = False,
):
    """fastai DataLoaders of (grayscale image, lesion mask) pairs from resized arrays (``scanner``:
    add :class:`~busi_utils.stage1.augment.ScannerShift` to the augmentations)."""
    from fastai.vision.all import (  # fastai: loaded where used (slow import)
        DataBlock,
        ImageBlock,
        IndexSplitter,
        MaskBlock,
        Normalize,
        PILImageBW,
        PILMask,
    )

    items = list(train_ids) + list(valid_ids)
    block = DataBlock(
        blocks=(ImageBlock(cls=PILImageBW), MaskBlock(codes=["background", "lesion"])),
        get_x=lambda i: PILImageBW.create(store.image(i)),
        get_y=lambda i: PILMask.create(store.mask(i).astype(np.uint8)),
        splitter=IndexSplitter(list(range(len(train_ids), len(items)))),
        batch_tfms=[
            *(ultrasound_segmentation(size, scanner) if augment else []),
            Normalize.from_stats([stats[0]], [stats[1]]),
        ],
    )
    return block.dataloaders(items, bs=bs, num_workers=0, drop_last=True)


# --------------------------------------------------------------------------- training


def ids_hash(ids: Sequence[str]) -> str:
    """A short hash of a list of image ids: the fingerprint of what a model trained on."""
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()[:16]


def _learner(
    store: ArrayStore, train_ids: Sequence[str], valid_ids: Sequence[str], recipe: dict, path: Path, show_progress: bool
):
    """The fastai ``Learner`` of a recipe: DataLoaders, network, loss, metrics, splitter."""
    from fastai.learner import Learner  # fastai: loaded where used (slow import)

    stats = norm_stats(store, train_ids)
    watch = list(valid_ids) or list(train_ids[: recipe["batch_size"]])  # fastai wants a validation set
    dls = seg_dataloaders(
        store, train_ids, watch, recipe["size"], recipe["batch_size"], stats, scanner=recipe.get("aug") == "scanner"
    )
    model = segmenter_from_recipe(recipe, verbose=show_progress)
    splitter = {"splitter": encoder_decoder_split} if isinstance(model, Lite0UNet) else {}
    learn = Learner(
        dls,
        model,
        loss_func=LOSSES[recipe.get("loss", "dice_bce")](),
        metrics=[dice, iou],
        path=path,
        model_dir=".",
        **splitter,
    )
    if not show_progress:
        training.quiet(learn)
    return learn, stats


def train_segmenter(
    store: ArrayStore,
    train_ids: Sequence[str],
    valid_ids: Sequence[str],
    recipe: dict,
    seed: int,
    show_progress: bool = True,
):
    """Train a U-Net by ``recipe`` with fastai's one-cycle schedule (``fine_tune`` for a
    pretrained encoder), seeded, and keep the **last** epoch.

    ``valid_ids`` are only *watched* (their Dice per epoch goes into the history); nothing is
    chosen on them, so the same function trains the cross-fitted fold models of notebook 03,
    whose held-out fold must not influence their training. Returns ``(model, history, info)``.
    """
    from fastai.torch_core import set_seed  # fastai: loaded where used (slow import)

    set_seed(seed, reproducible=True)
    with training.temporary_folder("busi-seg-") as tmp:
        learn, stats = _learner(store, train_ids, valid_ids, recipe, tmp, show_progress)
        history, seconds = training.fit(learn, recipe, recipe["lr"])
    info = {
        "recipe": dict(recipe),
        "stats": list(stats),
        "train_ids": sorted(map(str, train_ids)),
        "train_ids_hash": ids_hash(train_ids),
        "seed": seed,
        "lr": recipe["lr"],
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / training.total_epochs(recipe), 2),
        "last_valid_dice": float(history["dice"].iloc[-1]) if len(valid_ids) else None,
    }
    learn.model.eval()
    return learn.model, history, info


def suggest_lr(store: ArrayStore, train_ids: Sequence[str], recipe: dict, seed: int, num_it: int = 40) -> float:
    """fastai's learning-rate finder on a fresh copy of the recipe's network (the frozen phase's
    rate for a pretrained encoder): its *valley* suggestion, for comparison with the recipe's
    ``lr``. Nothing is trained for keeps; the course's models use the recipe's rate."""
    from fastai.torch_core import set_seed  # fastai: loaded where used (slow import)

    set_seed(seed, reproducible=True)
    with training.temporary_folder("busi-lrfind-") as tmp:
        learn, _ = _learner(store, train_ids, [], recipe, tmp, show_progress=False)
        if training.uses_fine_tune(recipe):
            learn.freeze()
        return float(learn.lr_find(num_it=num_it, show_plot=True).valley)


def model_fingerprint(recipe: dict, seed: int, train_ids_hash: str) -> str:
    """What makes two U-Nets the same model: recipe, seed and training list. Stored with every
    predicted mask so that a changed profile invalidates stale masks instead of reusing them."""
    blob = json.dumps({"recipe": dict(recipe), "seed": int(seed), "train": train_ids_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def info_fingerprint(info: dict) -> str:
    """:func:`model_fingerprint` of a saved model, from the info stored beside its weights."""
    return model_fingerprint(info["recipe"], info["seed"], info["train_ids_hash"])


def train_fold(
    paths, store: ArrayStore, manifest: pd.DataFrame, recipe: dict, seed: int, fold: int, show_progress: bool = True
) -> Trained:
    """Stage 1's recipe, the one function behind every U-Net of the course: the U-Net that leaves
    fold ``fold`` out, trained (or loaded, when ``paths`` already holds it with this recipe, seed
    and training list). Notebook 02 teaches with fold 0; notebook 03 calls it for every fold."""
    train_ids, valid_ids = fold_ids(manifest, fold, normals=trains_on_normals(recipe))
    check_training_items(manifest, train_ids, normals=trains_on_normals(recipe))
    return get_or_train(
        paths.fold_unet(fold),
        store,
        train_ids,
        valid_ids,
        recipe,
        fold_seed(seed, fold),
        show_progress=show_progress,
    )


def get_or_train(
    path: Path,
    store: ArrayStore,
    train_ids: Sequence[str],
    valid_ids: Sequence[str],
    recipe: dict,
    seed: int,
    **train_kw,
) -> Trained:
    """Load the model at ``path`` if it was trained with this recipe, seed and training list;
    otherwise train and save it (with its history beside it)."""
    path, hist_path = Path(path), RunPaths.history(path)
    if path.exists() and hist_path.exists():
        model, info = load_segmenter(path)
        if info["recipe"] == dict(recipe) and info["seed"] == seed and info["train_ids_hash"] == ids_hash(train_ids):
            return Trained(model, info, pd.read_csv(hist_path), False)
    model, history, info = train_segmenter(store, train_ids, valid_ids, recipe, seed, **train_kw)
    atomic_write_text(hist_path, history.to_csv(index=False))
    save_segmenter(path, model, info)  # the model last: its presence means "done"
    return Trained(model, info, history, True)
