"""Stage 2, *what?*: the classifiers and their one training recipe (fastai, a timm body).

Their inputs (the whole scan + predicted mask, the lesion view, the ablations) are built in
:mod:`busi_utils.stage2.inputs` and gathered here, so a chapter calls both as ``cls.<name>``.
The method's ensembles of these classifiers are :mod:`busi_utils.stage2.crossfit`; the decision
fused from them, :mod:`busi_utils.stage2.fusion`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from busi_utils.core import tta
from busi_utils.core.config import CLASSES
from busi_utils.core.files import load_checkpoint, save_checkpoint
from busi_utils.core.layout import channels_last
from busi_utils.stage1 import training
from busi_utils.stage1.augment import mirror_and_gamma, mirror_and_scanner, ultrasound_multichannel
from busi_utils.stage2.inputs import (
    CHANNELS,
    CROP_SCALE,
    VARIANTS,
    VariantData,
    build_inputs,
    crop_source_size,
    load_variant_data,
    masks_hash,
    probs_frame,
    read_probs_file,
    variant_file,
)
from busi_utils.stage2.networks import build_classifier, linear_head

__all__ = [  # this module's own names, and those it gathers from inputs and networks (chapters reach them as cls.<name>)
    "build_classifier",
    "build_inputs",
    "channel_stats",
    "CHANNELS",
    "class_weights",
    "cls_dataloaders",
    "CROP_SCALE",
    "crop_source_size",
    "input_stats",
    "kept_epoch",
    "linear_head",
    "load_classifier",
    "load_variant_data",
    "masks_hash",
    "predict_proba",
    "predict_tta",
    "probs_frame",
    "read_probs_file",
    "reading_learner",
    "recipe_learner",
    "save_classifier",
    "train_classifier",
    "variant_file",
    "VariantData",
    "VARIANTS",
]


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
    """fastai DataLoaders over in-memory multi-channel arrays (as :class:`ScanWithMask`, which
    fastai's ``show_batch`` / ``show_results`` can draw). ``kinds`` names the channels
    (default: image, then predicted mask) so that lighting touches only the scan and
    ``mask_aug`` only predicted masks. ``aug``: ``"fastai"`` (``aug_transforms``: flips, small
    rotations and zooms, lighting), ``"scan"`` (mirror, and gamma/gain/bias on the scan only) or
    ``"scanner"`` (``"scan"`` and another scanner's depth gain, gamma, speckle and resolution:
    :class:`~busi_utils.stage1.augment.ScannerShift`). ``balance='sampler'`` draws batches with class-balanced
    probabilities (fastai's weighted dataloader)."""
    from fastai.vision.all import Categorize, Datasets, Normalize  # fastai: loaded where used (slow import)

    from busi_utils.stage2.display import ScanWithMask  # fastai: loaded where used (slow import)

    xs = np.concatenate([x_train, x_valid])
    ys = list(y_train) + list(y_valid)
    n_train = len(x_train)
    dsets = Datasets(
        list(range(len(xs))),
        tfms=[
            [lambda i: ScanWithMask(torch.from_numpy(xs[i]))],
            [lambda i: ys[i], Categorize(vocab=list(CLASSES), sort=False)],
        ],
        splits=[list(range(n_train)), list(range(n_train, len(xs)))],
    )

    kinds = list(kinds or CHANNELS["image+pred_mask"][: x_train.shape[1]])
    scan_only = {"scan": mirror_and_gamma, "scanner": mirror_and_scanner}
    augs = scan_only[aug](kinds) if aug in scan_only else ultrasound_multichannel(x_train.shape[-1], kinds, mask_aug)
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
    import fastai.callback.channelslast  # noqa: F401  (adds Learner.to_channelslast)
    from fastai.callback.tracker import SaveModelCallback  # fastai: loaded where used (slow import)
    from fastai.torch_core import set_seed  # fastai: loaded where used (slow import)

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
        learn = recipe_learner(dls, model, recipe, y_train, balance, tmp)
        if learn.dls.device.type == "cpu":  # measured there only (busi_utils.core.layout): about 1.5x
            learn.to_channelslast(use_amp=False)
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


def recipe_learner(dls, model: nn.Module, recipe: dict, y_train: Sequence[str], balance: str, path: Path):
    """The recipe's fastai ``Learner``: cross-entropy (inverse-frequency class weights under
    ``weighted_loss``, the recipe's label smoothing), accuracy and macro-F1, body/head splitter."""
    from fastai.learner import Learner  # fastai: loaded where used (slow import)
    from fastai.losses import CrossEntropyLossFlat  # fastai: loaded where used (slow import)
    from fastai.metrics import F1Score, accuracy  # fastai: loaded where used (slow import)
    from fastai.vision.learner import default_split  # fastai: loaded where used (slow import)

    weight = class_weights(y_train) if balance == "weighted_loss" else None
    smoothing = float(recipe.get("label_smoothing", 0.0))
    return Learner(
        dls,
        model,
        loss_func=CrossEntropyLossFlat(weight=weight, label_smoothing=smoothing),
        metrics=[accuracy, F1Score(average="macro")],
        path=path,
        model_dir=".",
        splitter=default_split,
    )


def reading_learner(model: nn.Module, info: dict, x_train, y_train, x_valid, y_valid, path: Path = Path(".")):
    """A ``Learner`` around an already *trained* classifier and its own validation arrays (a
    member's held-out fold). It trains nothing: it lets fastai's views read the model,
    ``learn.show_results()`` and ``ClassificationInterpretation.from_learner(learn)``."""
    r = info["recipe"]
    dls = cls_dataloaders(
        x_train, y_train, x_valid, y_valid, r["batch_size"], info["stats"], info["balance"], info["seed"],
        CHANNELS.get(info.get("variant", "")), bool(r.get("mask_aug")), r.get("aug", "fastai"),
    )  # fmt: skip
    return recipe_learner(dls, model, r, y_train, info["balance"], path)


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
    return predict_proba(model, x, stats, n_views=2)


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, stats, bs: int = 64, n_views: int = 1) -> np.ndarray:
    """Class probabilities (N, 3) in CLASSES order, averaged over ``n_views`` TTA views
    (:func:`busi_utils.core.tta.averaged`: 1 is the scan alone, 2 adds its mirror image).
    Puts ``model`` in eval mode and channels-last layout, in place (:mod:`busi_utils.core.layout`)."""
    model = channels_last(model.eval())
    mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
    std = torch.tensor(stats[1]).view(1, -1, 1, 1)
    out = []
    for k in range(0, len(x), bs):
        xb = (torch.from_numpy(x[k : k + bs]) - mean) / std
        out.append(tta.averaged(lambda v: torch.softmax(model(v), dim=1), xb, n_views).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)


def save_classifier(path: Path, model: nn.Module, info: dict) -> None:

    save_checkpoint(path, model.state_dict(), info)


def load_classifier(path: Path) -> tuple[nn.Module, dict]:

    state, info = load_checkpoint(path)
    r = info["recipe"]
    model = build_classifier(  # the weights follow
        r["arch"], info["n_in"], pretrained=False, head=r.get("head", "fastai"), dropout=float(r.get("dropout", 0.3))
    )
    model.load_state_dict(state)
    return model.eval(), info
