"""Stage 2, *what?*: a classifier that reads the image and the predicted lesion mask.

Input: a 2-channel tensor, channel 1 the grayscale scan, channel 2 the lesion probability
from stage 1 (out-of-fold masks for training-pool images, final-U-Net masks for test
images: :mod:`busi_utils.oof`). The ablation variants use the identical recipe:

===================  ===================================  ==============================
variant              channels                             role
===================  ===================================  ==============================
``image_only``       image                                baseline
``image+pred_mask``  image, predicted mask                the method
``mask_only``        predicted mask                       how far shape alone goes
``image+gt_mask``    image, ground-truth mask             leaky upper bound (a deployed
                                                          system never has this mask)
===================  ===================================  ==============================
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from PIL import Image

from .config import CLASSES, RunPaths, atomic_write_text
from .preprocess import ArrayStore

VARIANTS = ("image_only", "image+pred_mask", "mask_only", "image+gt_mask")
CHANNELS = {"image_only": ("image",), "image+pred_mask": ("image", "pred_mask"), "mask_only": ("pred_mask",), "image+gt_mask": ("image", "gt_mask")}


def resize_prob(prob: np.ndarray, size: int) -> np.ndarray:
    """Resize a probability map (bilinear), keeping it a probability."""
    if prob.shape == (size, size):
        return prob.astype(np.float32)
    return np.asarray(Image.fromarray(prob.astype(np.float32)).resize((size, size), Image.BILINEAR), dtype=np.float32)


def build_inputs(variant: str, ids: Sequence[str], images: ArrayStore, pred_masks: dict[str, np.ndarray] | None, size: int) -> np.ndarray:
    """(N, C, S, S) float32 in [0, 1]: the channels of ``variant`` for each image id.

    ``pred_masks`` maps image id to its stored predicted mask (leakage-safe; see oof). The
    ground-truth channel is used only by the variant that says so in its name.
    """
    out = np.zeros((len(ids), len(CHANNELS[variant]), size, size), dtype=np.float32)
    for n, i in enumerate(ids):
        for c, kind in enumerate(CHANNELS[variant]):
            if kind == "image":
                out[n, c] = images.image(i) / 255.0
            elif kind == "pred_mask":
                out[n, c] = resize_prob(pred_masks[i], size)
            else:
                out[n, c] = images.mask(i)
    return out


# --------------------------------------------------------------------------- data


def cls_dataloaders(x_train: np.ndarray, y_train: Sequence[str], x_valid: np.ndarray, y_valid: Sequence[str], bs: int, stats, balance: str, seed: int):
    """fastai DataLoaders over in-memory multi-channel arrays. ``balance='sampler'`` draws
    batches with class-balanced probabilities (fastai's weighted dataloader)."""
    from fastai.vision.all import Categorize, Datasets, Normalize, TensorImage

    xs = np.concatenate([x_train, x_valid])
    ys = list(y_train) + list(y_valid)
    n_train = len(x_train)
    dsets = Datasets(list(range(len(xs))), tfms=[[lambda i: TensorImage(torch.from_numpy(xs[i]))], [lambda i: ys[i], Categorize(vocab=list(CLASSES), sort=False)]],
                     splits=[list(range(n_train)), list(range(n_train, len(xs)))])
    from .augment import ultrasound_multichannel

    after = [*ultrasound_multichannel(x_train.shape[-1]), Normalize.from_stats(list(stats[0]), list(stats[1]), cuda=False)]
    if balance == "sampler":
        import fastai.callback.data  # noqa: F401  (patches Datasets.weighted_dataloaders in)

        counts = pd.Series(list(y_train)).value_counts()
        wgts = np.array([1.0 / counts[y] for y in y_train])
        return dsets.weighted_dataloaders(wgts, bs=bs, after_batch=after, num_workers=0, drop_last=True)
    return dsets.dataloaders(bs=bs, after_batch=after, num_workers=0, drop_last=True)


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training inputs (normalisation from training data only)."""
    return x.mean(axis=(0, 2, 3)).tolist(), (x.std(axis=(0, 2, 3)) + 1e-6).tolist()


# --------------------------------------------------------------------------- model and training


def build_classifier(arch: str, n_in: int, pretrained: bool | None = None, verbose: bool = False) -> nn.Module:
    """A torchvision CNN with ``n_in`` input channels and a fastai head (fastai's ``n_in``:
    the first convolution is adapted, summing pretrained RGB weights when they are cached)."""
    import torchvision
    from fastai.vision.learner import create_vision_model

    from .segmentation import imagenet_weights_cached

    cached = imagenet_weights_cached(arch)
    use = cached if pretrained is None else (pretrained and cached)
    if verbose:
        print(f"{arch} backbone: " + ("ImageNet weights from the local torch cache" if use else "no cached ImageNet weights, training from scratch"))
    return create_vision_model(getattr(torchvision.models, arch), n_out=len(CLASSES), pretrained=use, n_in=n_in)


def class_weights(labels: Sequence[str]) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1, in CLASSES order."""
    counts = pd.Series(list(labels)).value_counts().reindex(CLASSES).fillna(0).to_numpy(float)
    w = counts.sum() / (len(CLASSES) * np.maximum(counts, 1))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def train_classifier(x_train, y_train, x_valid, y_valid, recipe: dict, seed: int, balance: str | None = None, show_progress: bool = True):
    """Train with fastai (one-cycle, seeded); keep the epoch with the best validation
    macro-F1 (fold 0, never test). Returns ``(model, history, info)``."""
    from fastai.callback.progress import ProgressCallback
    from fastai.callback.tracker import SaveModelCallback
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import F1Score, accuracy
    from fastai.torch_core import set_seed

    set_seed(seed, reproducible=True)
    balance = balance or recipe.get("balance", "weighted_loss")
    stats = channel_stats(x_train)
    dls = cls_dataloaders(x_train, y_train, x_valid, y_valid, recipe["batch_size"], stats, balance, seed)
    weight = class_weights(y_train) if balance == "weighted_loss" else None
    model = build_classifier(recipe["arch"], x_train.shape[1], verbose=show_progress)
    tmp = Path(tempfile.mkdtemp(prefix="busi-cls-"))
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(weight=weight), metrics=[accuracy, F1Score(average="macro")], path=tmp, model_dir=".")
    if not show_progress:
        learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, ProgressCallback)])
    start = time.perf_counter()
    learn.fit_one_cycle(recipe["epochs"], recipe["lr"], cbs=[SaveModelCallback(monitor="f1_score", comp=np.greater, fname="best", with_opt=False)])
    seconds = time.perf_counter() - start
    names = [n for n in learn.recorder.metric_names[1:] if n != "time"]
    history = pd.DataFrame([v[: len(names)] for v in learn.recorder.values], columns=names)
    history.insert(0, "epoch", range(len(history)))
    info = {"recipe": dict(recipe), "balance": balance, "stats": [list(s) for s in stats], "n_in": int(x_train.shape[1]), "seed": seed,
            "train_seconds": round(seconds, 1), "seconds_per_epoch": round(seconds / recipe["epochs"], 2),
            "best_epoch": int(history["f1_score"].idxmax()), "vocab": list(CLASSES)}
    return learn.model.eval(), history, info


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
    from .config import save_checkpoint

    save_checkpoint(path, model.state_dict(), info)


def load_classifier(path: Path) -> tuple[nn.Module, dict]:
    from .config import load_checkpoint

    state, info = load_checkpoint(path)
    model = build_classifier(info["recipe"]["arch"], info["n_in"], pretrained=False)
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

    def __init__(self, paths: RunPaths, split: pd.DataFrame, images: ArrayStore, pred_masks: dict[str, np.ndarray], size: int):
        self.paths, self.split, self.images, self.pred_masks, self.size = paths, split, images, pred_masks, size
        pool = split[split["split"] == "train"]
        self.train = pool[pool["fold"] != 0]
        self.valid = pool[pool["fold"] == 0]
        self.test = split[split["split"] == "test"]
        self.masks_hash = masks_hash(pred_masks)

    def arrays(self, variant: str, part: str) -> tuple[np.ndarray, list[str]]:
        rows = getattr(self, part)
        return build_inputs(variant, rows["image_id"].tolist(), self.images, self.pred_masks, self.size), rows["label"].astype(str).tolist()


def get_or_train_variant(vd: VariantData, variant: str, recipe: dict, seed: int, balance: str, show_progress: bool = True):
    """Train (or load, when this run folder has it with the same recipe) one variant; save
    the model and its validation and test probabilities. Returns ``(info, history, trained)``."""
    path = vd.paths.models / f"classifier_{variant_file(variant)}_{balance}.pt"
    hist_path = path.with_suffix(".history.csv")
    if path.exists() and hist_path.exists():
        _, info = load_classifier(path)
        if info["recipe"] == dict(recipe) and info["seed"] == seed and info["balance"] == balance and info.get("masks_hash") == vd.masks_hash:
            return info, pd.read_csv(hist_path), False
    x_tr, y_tr = vd.arrays(variant, "train")
    x_va, y_va = vd.arrays(variant, "valid")
    model, history, info = train_classifier(x_tr, y_tr, x_va, y_va, recipe, seed, balance=balance, show_progress=show_progress)
    info["variant"] = variant
    info["masks_hash"] = vd.masks_hash
    info["train_ids"] = sorted(vd.train["image_id"])
    for part in ("valid", "test"):
        x, y = vd.arrays(variant, part)
        probs_frame(getattr(vd, part)["image_id"], y, predict_proba(model, x, info["stats"])).to_csv(
            vd.paths.preds / f"{variant_file(variant)}_{balance}_{part}.csv", index=False)
    atomic_write_text(hist_path, history.to_csv(index=False))
    save_classifier(path, model, info)
    return info, history, True


def read_probs(paths: RunPaths, variant: str, balance: str, part: str) -> pd.DataFrame:
    return pd.read_csv(paths.preds / f"{variant_file(variant)}_{balance}_{part}.csv", keep_default_na=False)


def random_split_experiment(index: pd.DataFrame, groups: pd.DataFrame, recipe: dict, seed: int, test_frac: float = 0.2, epochs: int | None = None, show_progress: bool = False) -> dict:
    """The leak most BUSI papers have: an ungrouped random split (duplicates may cross it,
    cross-label copies kept). Trains the image-only recipe on it and reports its test
    metrics and how many test images have a copy in training. Compare with the grouped split."""
    from sklearn.model_selection import train_test_split

    from .metrics import classification_metrics
    from .preprocess import resized_arrays

    ids = index["image_id"].tolist()
    labels = index["label"].astype(str).tolist()
    tr, te = train_test_split(np.arange(len(ids)), test_size=test_frac, stratify=labels, random_state=seed)
    tr_fit, tr_val = train_test_split(tr, test_size=0.2, stratify=[labels[i] for i in tr], random_state=seed)
    store = ArrayStore(resized_arrays(index, recipe["size"], progress=False))
    x = build_inputs("image_only", ids, store, None, recipe["size"])
    r = dict(recipe, epochs=epochs or recipe["epochs"])
    model, _, info = train_classifier(x[tr_fit], [labels[i] for i in tr_fit], x[tr_val], [labels[i] for i in tr_val], r, seed, show_progress=show_progress)
    probs = predict_proba(model, x[te], info["stats"])
    group = groups.set_index("image_id")["group"]
    train_groups = {group[ids[i]] for i in tr}
    crossing = sum(group[ids[i]] in train_groups for i in te)
    return {"test": classification_metrics([labels[i] for i in te], probs), "n_test": len(te), "test_with_copy_in_train": int(crossing)}
