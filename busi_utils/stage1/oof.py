"""Leakage-safe predicted masks by cross-fitting (out-of-fold prediction).

The classifier of stage 2 reads a *predicted* mask. If that mask came from a U-Net that had
trained on the same image, it would be too good: the classifier would learn to trust masks
it will never get at test time. So:

* for each fold k of the training pool, a U-Net trains on the lesion images of the *other*
  folds (their normal images too, when the recipe says ``normals``) and predicts every image of
  fold k;
* the hold-out test images get the mean of all K fold U-Nets' probabilities (none of them saw
  a test image): stage 1's ensemble, as nnU-Net ensembles its fold models;
* every mask is an 8-bit probability PNG with a manifest row naming the model(s) that made it
  and the hash of each one's training list; :func:`check_leak_free` proves from the manifest
  that no image (nor any duplicate of it) was in the training list of any model behind its mask.

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
from tqdm.auto import tqdm

from busi_utils.core import viz
from busi_utils.core.errors import LeakageError
from busi_utils.core.files import atomic_path, atomic_write_json, atomic_write_text
from busi_utils.core.images import prob_to_uint8
from busi_utils.core.runfolder import RunPaths
from busi_utils.data.preprocess import ArrayStore
from busi_utils.stage1 import segmentation as seg

MANIFEST_COLUMNS = ["image_id", "label", "split", "fold", "mask_path", "model", "model_train_hash", "model_fingerprint"]
SEP = ";"  # an ensemble's mask names every member: "unet_fold0.pt;unet_fold1.pt;..." and their hashes alike


def ensemble_record(members: list[tuple[str, dict]]) -> dict:
    """The manifest's ``model``, ``model_train_hash`` and ``model_fingerprint`` of a mask made by
    the mean of several models (``(file name, info)`` each), members joined by :data:`SEP`."""
    return {
        "model": SEP.join(name for name, _ in members),
        "model_train_hash": SEP.join(info["train_ids_hash"] for _, info in members),
        "model_fingerprint": SEP.join(seg.info_fingerprint(info) for _, info in members),
    }


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
    members: list[tuple[str, object, dict]],
    done: pd.DataFrame,
    progress: bool,
) -> pd.DataFrame:
    """Predict ``rows`` with the mean of ``members`` (``(file name, model, info)``; one member:
    a single model), store the PNGs and record them in the manifest (written last)."""
    ids = rows["image_id"].tolist()
    images = np.stack([store.image(i) for i in ids]) if ids else None
    probs = seg.predict_ensemble([(m, info) for _, m, info in members], images) if ids else []
    record = ensemble_record([(name, info) for name, _, info in members])
    label = record["model"] if len(members) == 1 else f"the {len(members)}-model ensemble"
    new = []
    for (_, r), p in tqdm(
        list(zip(rows.iterrows(), probs)), desc=f"masks from {label}", disable=not progress, leave=False
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
                **record,
            }
        )
    manifest = pd.concat(
        [done[~done["image_id"].isin(ids)], pd.DataFrame(new, columns=MANIFEST_COLUMNS)], ignore_index=True
    )
    atomic_write_text(paths.mask_manifest, manifest.to_csv(index=False))  # last: the fold is done
    return manifest


def _is_done(manifest: pd.DataFrame, ids, record: dict) -> bool:
    """True when every image of ``ids`` has a stored mask made by exactly ``record``'s models."""
    have = manifest[
        (manifest["model"] == record["model"]) & (manifest["model_fingerprint"] == record["model_fingerprint"])
    ]
    return set(ids) <= set(have["image_id"])


def _file_fingerprint(path: Path) -> str | None:
    """The fingerprint of the model saved at ``path`` (``None`` when there is none)."""
    return seg.info_fingerprint(seg.load_segmenter(path)[1]) if path.exists() else None


def _fold_record(fold: int, info: dict, n_predicted: int, trained_now: bool) -> dict:
    """What a fold model is, from its saved info (the same whether it was trained in this run or
    resumed, so a resumed notebook writes the same summary); ``trained_now`` says which."""
    return {
        "fold": fold,
        "trained_now": trained_now,
        "seconds": info.get("train_seconds"),  # None for a model copied without its .time.json
        "seconds_per_epoch": info.get("seconds_per_epoch"),
        "n_train": len(info["train_ids"]),
        "n_predicted": n_predicted,
        "held_out_dice_last_epoch": info.get("last_valid_dice"),
    }


def run_oof(
    paths: RunPaths,
    store: ArrayStore,
    split: pd.DataFrame,
    recipe: dict,
    seed: int,
    progress: bool = True,
    on_fold_done: Callable[[int], None] | None = None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Cross-fit one U-Net per fold (:func:`~busi_utils.stage1.segmentation.train_fold`, the recipe of
    notebook 02), predict its held-out fold, then the test split with the mean of all fold
    models. Returns the mask manifest and one record per fold (:func:`_fold_record`)."""
    manifest = read_mask_manifest(paths)
    records = []
    for k in tqdm(seg.fold_numbers(split), desc="folds", disable=not progress):
        fold_rows = split[(split["split"] == "train") & (split["fold"] == k)]
        train_ids, _ = seg.fold_ids(split, k, normals=seg.trains_on_normals(recipe))
        name = paths.fold_unet(k).name
        fingerprint = seg.model_fingerprint(recipe, seg.fold_seed(seed, k), seg.ids_hash(train_ids))
        planned = {"model": name, "model_fingerprint": fingerprint}
        if _is_done(manifest, fold_rows["image_id"], planned) and _file_fingerprint(paths.fold_unet(k)) == fingerprint:
            info = seg.load_segmenter(paths.fold_unet(k))[1]
            records.append(_fold_record(k, info, len(fold_rows), trained_now=False))
            continue
        run = seg.train_fold(paths, store, split, recipe, seed, k, show_progress=progress)
        manifest = _predict_and_record(paths, store, fold_rows, [(name, run.model, run.info)], manifest, progress)
        records.append(_fold_record(k, run.info, len(fold_rows), trained_now=run.trained))
        if on_fold_done:
            on_fold_done(k)
    test_rows = split[split["split"] == "test"]
    members = [
        (paths.fold_unet(k).name, *member)
        for k, member in zip(seg.fold_numbers(split), seg.load_ensemble(paths, split))
    ]
    if not _is_done(manifest, test_rows["image_id"], ensemble_record([(n, info) for n, _, info in members])):
        manifest = _predict_and_record(paths, store, test_rows, members, manifest, progress)
    return manifest, records


def check_leak_free(mask_manifest: pd.DataFrame, split: pd.DataFrame, paths: RunPaths) -> int:
    """Raise :class:`LeakageError` unless, for every predicted mask, the training list of every
    model behind it (one fold model, or each member of the test ensemble; read from the model
    file and checked against the manifest's hash) contains neither the image nor any member of
    its duplicate group. Returns the number of masks checked."""
    group_of = split.set_index("image_id")["group"]
    members = split.groupby("group")["image_id"].apply(set)
    trained_on: dict[str, set] = {}
    for names, hashes in mask_manifest[["model", "model_train_hash"]].drop_duplicates().itertuples(index=False):
        names, hashes = names.split(SEP), hashes.split(SEP)
        if len(names) != len(hashes):
            raise LeakageError(f"{SEP.join(names)}: the manifest names {len(names)} models but {len(hashes)} hashes")
        for name, expected in zip(names, hashes):
            _, info = seg.load_segmenter(paths.segmenter(name))
            if info["train_ids_hash"] != expected:
                raise LeakageError(
                    f"{name}: the manifest's training hash does not match the model file (replaced model?)"
                )
            trained_on[name] = set(info["train_ids"])
    for r in mask_manifest.itertuples():
        family = members[group_of[r.image_id]]
        for name in r.model.split(SEP):
            seen = family & trained_on[name]
            if seen:
                raise LeakageError(f"mask of {r.image_id!r} comes from {name}, which trained on {sorted(seen)[0]!r}")
    return len(mask_manifest)


def load_masks(paths: RunPaths, mask_manifest: pd.DataFrame, ids) -> np.ndarray:
    """Stored probability masks for ``ids``, in that order."""
    where = mask_manifest.set_index("image_id")["mask_path"]
    return np.stack([load_prob_png(paths.masks / where[i]) for i in ids])


IN_SAMPLE, OUT_OF_FOLD, TEST = "in-sample (fold-0 U-Net, seen)", "out-of-fold (unseen)", "test (fold ensemble, unseen)"


def mask_quality(paths: RunPaths, split: pd.DataFrame, store: ArrayStore, mask_manifest: pd.DataFrame) -> pd.DataFrame:
    """Per-image Dice/IoU of three kinds of predicted masks, on lesion images:

    * in-sample: the fold-0 U-Net on the images it trained on (what a leaky pipeline uses),
    * out-of-fold: the stored masks of those same images (each from the fold model that left
      it out: the same recipe, so the gap is the leak alone),
    * test: the stored masks of the test split (the fold ensemble).

    One row per image and kind, with columns dice, iou, kind, image_id.
    """
    first = seg.fold_numbers(split)[0]
    model, info = seg.load_segmenter(paths.fold_unet(first))
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


def oof_dice(paths: RunPaths, split: pd.DataFrame, store: ArrayStore, mask_manifest: pd.DataFrame) -> pd.DataFrame:
    """Dice/IoU of every lesion image of the training pool on its stored (out-of-fold) mask, with
    its fold: how good each fold U-Net is on the fold it never saw (rows: dice, iou, fold)."""
    pool = split[(split["split"] == "train") & (split["label"] != "normal")]
    ids = pool["image_id"].tolist()
    truths = np.stack([store.mask(i) for i in ids])
    return seg.score_masks(load_masks(paths, mask_manifest, ids), truths).assign(fold=pool["fold"].to_numpy())


def write_mask_summary(paths: RunPaths, per_fold: pd.Series, dice_by_kind: pd.Series, records: list[dict]) -> None:
    """``masks/summary.json``: out-of-fold Dice per fold, mean Dice per kind of mask, and the fold
    records without ``trained_now`` (so a resumed run writes the same file as a fresh one)."""
    folds = [{k: v for k, v in r.items() if k != "trained_now"} for r in records]
    summary = {"oof_dice_per_fold": per_fold.to_dict(), "dice_by_kind": dice_by_kind.to_dict(), "folds": folds}
    atomic_write_json(paths.mask_summary, summary)


def leak_gaps(dice_table: pd.DataFrame) -> pd.DataFrame:
    """Per image the fold-0 U-Net trained on (rows of :func:`mask_quality`): its in-sample and
    out-of-fold Dice side by side, and ``gap``, the first minus the second (the leak, per image)."""
    both = dice_table[dice_table["kind"].isin([IN_SAMPLE, OUT_OF_FOLD])]
    wide = both.pivot_table(index="image_id", columns="kind", values="dice")[[IN_SAMPLE, OUT_OF_FOLD]]
    return wide.assign(gap=wide[IN_SAMPLE] - wide[OUT_OF_FOLD])


def show_seen_unseen(store: ArrayStore, gaps: pd.DataFrame, in_sample: np.ndarray, out_of_fold: np.ndarray):
    """One row per image of ``gaps``: the hand-drawn truth (green), the in-sample mask and the
    out-of-fold mask (red), each titled with its Dice: the leak, seen."""
    cells, titles = [], []
    for image_id, seen, unseen in zip(gaps.index, in_sample, out_of_fold):
        scan = store.image(image_id)
        cells += [viz.overlay(scan, store.mask(image_id), color=(0.2, 1, 0.2)), viz.overlay(scan, seen >= 0.5)]
        cells.append(viz.overlay(scan, unseen >= 0.5))
        titles += [f"{image_id}: truth", f"in-sample Dice {gaps.loc[image_id, IN_SAMPLE]:.2f}"]
        titles.append(f"out-of-fold Dice {gaps.loc[image_id, OUT_OF_FOLD]:.2f}")
    return viz.show_grid(cells, titles, ncols=3, size=2.8)
