"""Leakage-safe predicted masks by cross-fitting (out-of-fold prediction).

The classifier of stage 2 reads a *predicted* mask. If that mask came from a U-Net that had
trained on the same image, it would be too good: the classifier would learn to trust masks
it will never get at test time. So:

* for each fold k of the training pool, a U-Net trains on the lesion images of the *other*
  folds and predicts every image of fold k (normal images too);
* the hold-out test images get their masks from stage 1's final U-Net (which never saw them);
* every mask is an 8-bit probability PNG with a manifest row naming the model that made it
  and the hash of that model's training list; :func:`check_leak_free` proves from the
  manifest that no image (nor any duplicate of it) was in its predictor's training list.

The run resumes: a fold whose masks are all in the manifest, made by a model with the same
fingerprint (recipe, seed, training list), is skipped; files are written
atomically, the manifest last.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import segmentation as seg
from .errors import LeakageError
from .files import atomic_path, atomic_write_text
from .images import prob_to_uint8
from .preprocess import ArrayStore
from .runfolder import UNET_FINAL, RunPaths

MANIFEST_COLUMNS = ["image_id", "label", "split", "fold", "mask_path", "model", "model_train_hash", "model_fingerprint"]


def save_prob_png(prob: np.ndarray, path: Path) -> None:
    """An 8-bit probability PNG (0-255), written atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(prob_to_uint8(prob)).save(tmp, format="PNG")


def load_prob_png(path: Path | str) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float32) / 255.0


def read_mask_manifest(paths: RunPaths) -> pd.DataFrame:
    path = paths.mask_manifest
    if not path.exists():
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    manifest = pd.read_csv(path, keep_default_na=False)
    return manifest.reindex(columns=MANIFEST_COLUMNS, fill_value="")  # older manifests: no fingerprint, so recomputed


def _predict_and_record(
    paths: RunPaths,
    store: ArrayStore,
    rows: pd.DataFrame,
    model,
    info: dict,
    model_name: str,
    done: pd.DataFrame,
    progress: bool,
) -> pd.DataFrame:
    from tqdm.auto import tqdm

    ids = rows["image_id"].tolist()
    probs = seg.predict_masks(model, info, np.stack([store.image(i) for i in ids])) if ids else []
    new = []
    for (_, r), p in tqdm(
        list(zip(rows.iterrows(), probs)), desc=f"masks from {model_name}", disable=not progress, leave=False
    ):
        rel = paths.mask_png(r["split"], r["image_id"])
        save_prob_png(p, paths.masks / rel)
        new.append(
            {
                "image_id": r["image_id"],
                "label": r["label"],
                "split": r["split"],
                "fold": int(r["fold"]),
                "mask_path": str(rel),
                "model": model_name,
                "model_train_hash": info["train_ids_hash"],
                "model_fingerprint": seg.info_fingerprint(info),
            }
        )
    manifest = pd.concat(
        [done[~done["image_id"].isin(ids)], pd.DataFrame(new, columns=MANIFEST_COLUMNS)], ignore_index=True
    )
    atomic_write_text(paths.mask_manifest, manifest.to_csv(index=False))  # last: the fold is done
    return manifest


def run_oof(
    paths: RunPaths,
    store: ArrayStore,
    split: pd.DataFrame,
    recipe: dict,
    seed: int,
    progress: bool = True,
    on_fold_done: Callable[[int], None] | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Cross-fit one U-Net per fold, predict its held-out fold, and the test split with the
    final model. Returns the mask manifest and one record per fold (trained or resumed, time)."""
    from tqdm.auto import tqdm

    manifest = read_mask_manifest(paths)
    folds = sorted(int(f) for f in split.loc[split["split"] == "train", "fold"].unique())
    records = []
    for k in tqdm(folds, desc="folds", disable=not progress):
        fold_rows = split[(split["split"] == "train") & (split["fold"] == k)]
        train_ids = seg.lesion_train_ids(split, exclude_fold=k)
        name = paths.fold_unet(k).name
        fingerprint = seg.model_fingerprint(recipe, seed + 1 + k, seg.ids_hash(train_ids))
        have = manifest[(manifest["model"] == name) & (manifest["model_fingerprint"] == fingerprint)]
        if set(fold_rows["image_id"]) <= set(have["image_id"]) and paths.fold_unet(k).exists():
            records.append({"fold": k, "trained": False, "seconds": 0.0})
            continue
        run = seg.get_or_train(
            paths.fold_unet(k),
            store,
            train_ids,
            [],
            recipe,
            seed + 1 + k,
            select_on_valid=False,
            show_progress=progress,
        )
        manifest = _predict_and_record(paths, store, fold_rows, run.model, run.info, name, manifest, progress)
        records.append(
            {
                "fold": k,
                "trained": run.trained,
                "seconds": run.info["train_seconds"] if run.trained else 0.0,
                "seconds_per_epoch": run.info["seconds_per_epoch"],
                "n_train": len(train_ids),
                "n_predicted": len(fold_rows),
            }
        )
        if on_fold_done:
            on_fold_done(k)
    test_rows = split[split["split"] == "test"]
    final_path = paths.unet_final
    if not final_path.exists():
        raise FileNotFoundError(f"{final_path}: stage 1's final U-Net is missing; run notebook 02 first")
    model, info = seg.load_segmenter(final_path)
    fingerprint = seg.info_fingerprint(info)
    have = manifest[(manifest["model"] == UNET_FINAL) & (manifest["model_fingerprint"] == fingerprint)]
    if not set(test_rows["image_id"]) <= set(have["image_id"]):
        manifest = _predict_and_record(paths, store, test_rows, model, info, UNET_FINAL, manifest, progress)
    return manifest, records


def check_leak_free(mask_manifest: pd.DataFrame, split: pd.DataFrame, paths: RunPaths) -> int:
    """Raise :class:`LeakageError` unless, for every predicted mask, the predicting model's
    training list (read from the model file, checked against the manifest's hash) contains
    neither the image nor any member of its duplicate group. Returns the number checked."""
    group_of = split.set_index("image_id")["group"]
    members = split.groupby("group")["image_id"].apply(set)
    trained_on: dict[str, set] = {}
    for name, rows in mask_manifest.groupby("model"):
        _, info = seg.load_segmenter(paths.segmenter(name))
        if set(rows["model_train_hash"]) != {info["train_ids_hash"]}:
            raise LeakageError(f"{name}: the manifest's training hash does not match the model file (replaced model?)")
        trained_on[name] = set(info["train_ids"])
    for r in mask_manifest.itertuples():
        family = members[group_of[r.image_id]]
        seen = family & trained_on[r.model]
        if seen:
            raise LeakageError(f"mask of {r.image_id!r} comes from {r.model}, which trained on {sorted(seen)[0]!r}")
    return len(mask_manifest)


def load_masks(paths: RunPaths, mask_manifest: pd.DataFrame, ids) -> np.ndarray:
    """Stored probability masks for ``ids``, in that order."""
    where = mask_manifest.set_index("image_id")["mask_path"]
    return np.stack([load_prob_png(paths.masks / where[i]) for i in ids])


IN_SAMPLE, OUT_OF_FOLD, TEST = "in-sample (final U-Net, seen)", "out-of-fold (unseen)", "test (final U-Net, unseen)"


def mask_quality(paths: RunPaths, split: pd.DataFrame, store: ArrayStore, mask_manifest: pd.DataFrame) -> pd.DataFrame:
    """Per-image Dice/IoU of three kinds of predicted masks, on lesion images:

    * in-sample: stage 1's final U-Net on the images it trained on (what a leaky pipeline uses),
    * out-of-fold: the stored masks of those same images (what this course uses),
    * test: the stored masks of the test split.

    One row per image and kind, with columns dice, iou, kind, image_id.
    """
    model, info = seg.load_segmenter(paths.unet_final)
    lesion = split[(split["label"] != "normal") & split["split"].isin(["train", "test"])]
    seen = sorted(set(info["train_ids"]) & set(lesion["image_id"]))
    test = lesion.loc[lesion["split"] == "test", "image_id"].tolist()
    parts = [
        (IN_SAMPLE, seen, seg.predict_masks(model, info, np.stack([store.image(i) for i in seen]))),
        (OUT_OF_FOLD, seen, load_masks(paths, mask_manifest, seen)),
        (TEST, test, load_masks(paths, mask_manifest, test)),
    ]
    return pd.concat(
        [
            seg.score_masks(probs, np.stack([store.mask(i) for i in ids])).assign(kind=kind, image_id=ids)
            for kind, ids, probs in parts
        ],
        ignore_index=True,
    )
