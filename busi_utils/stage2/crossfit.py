"""Stage 2 as cross-fitted ensembles: for each view, K classifiers, member k trained on the
training pool outside fold k and scored on fold k.

Why K models instead of one (chapter 4):

* **stability**: one classifier trained on ~500 scans moves by several points of macro-F1 with
  the seed or the machine; the mean of K members moves far less;
* **out-of-fold probabilities for the whole pool**: every training-pool image is predicted by
  the one member that never saw it, so the fusion, the temperature and the referral cutoff are
  fitted on ~600 held-out images instead of the 122 of one validation fold;
* **a fixed schedule**: each member keeps its last epoch (``keep: last``), so its held-out
  fold is only watched, never chosen on, and its out-of-fold probabilities stay honest.

Test images (and any new scan) get the mean of the K members. Everything a member saw is in its
saved info (``train_ids``), which :func:`check_members_leak_free` checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from busi_utils.core import images
from busi_utils.core.config import CLASSES
from busi_utils.core.files import atomic_write_text
from busi_utils.core.runfolder import RunPaths
from busi_utils.core.scores import classification_metrics
from busi_utils.stage1.segmentation import fold_seed
from busi_utils.stage1.training import Trained
from busi_utils.stage2 import classification as cls
from busi_utils.stage2 import fusion

P = [f"p_{c}" for c in CLASSES]


def member_stem(view: str, fold: int, seed: int | None = None) -> str:
    """File stem of view ``view``'s member ``fold`` (``seed`` only for a seed study's repeats)."""
    return f"{cls.variant_file(view)}_fold{fold}" + (f"_seed{seed}" if seed is not None else "")


def member_path(paths: RunPaths, view: str, fold: int, seed: int | None = None):
    return paths.classifier(member_stem(view, fold, seed))


def _resumable(path, recipe: dict, seed: int, masks_hash: str) -> Trained | None:
    """The saved member when it was trained by this very recipe, seed and set of masks."""
    hist_path = RunPaths.history(path)
    if not (path.exists() and hist_path.exists()):
        return None
    model, info = cls.load_classifier(path)
    if info["recipe"] == dict(recipe) and info["seed"] == seed and info.get("masks_hash") == masks_hash:
        return Trained(model, info, pd.read_csv(hist_path), False)
    return None


def train_member(
    vd: cls.VariantData,
    view: str,
    recipe: dict,
    seed: int,
    fold: int,
    show_progress: bool = False,
    tag: int | None = None,
) -> Trained:
    """Train (or resume) member ``fold`` of ``view``: trained on the pool outside ``fold`` with
    seed ``fold_seed(seed, fold)``; saves its out-of-fold probabilities (fold ``fold``, mirror
    TTA), its test probabilities and its history, the model file last (its presence means done)."""
    path = member_path(vd.paths, view, fold, tag)
    member_seed = fold_seed(seed, fold)
    resumed = _resumable(path, recipe, member_seed, vd.masks_hash)
    if resumed is not None:
        return resumed
    (x_tr, y_tr), (x_va, y_va) = vd.fold_arrays(view, fold)
    model, history, info = cls.train_classifier(
        x_tr, y_tr, x_va, y_va, recipe, member_seed, show_progress=show_progress, kinds=cls.CHANNELS[view]
    )
    pool = vd.pool
    info.update(
        variant=view,
        fold=int(fold),
        masks_hash=vd.masks_hash,
        train_ids=sorted(pool[pool["fold"] != fold]["image_id"]),
    )
    stem = member_stem(view, fold, tag)
    held_out = pool[pool["fold"] == fold]
    parts = {"oof": (held_out, x_va, y_va), "test": (vd.test, *vd.arrays(view, "test"))}
    for part, (rows, x, y) in parts.items():
        frame = cls.probs_frame(rows["image_id"], y, cls.predict_tta(model, x, info["stats"]))
        atomic_write_text(vd.paths.probabilities(stem, part), frame.to_csv(index=False))
    atomic_write_text(RunPaths.history(path), history.to_csv(index=False))
    cls.save_classifier(path, model, info)
    return Trained(model, info, history, True)


def train_view(
    vd: cls.VariantData,
    view: str,
    recipe: dict,
    seed: int,
    folds: Sequence[int],
    progress: bool = True,
    tag: int | None = None,
) -> list[Trained]:
    """All members of one view, with a progress bar over the folds (resumed members are instant)."""
    return [
        train_member(vd, view, recipe, seed, k, tag=tag)
        for k in tqdm(list(folds), desc=f"{view} members", disable=not progress)
    ]


def oof_probs(paths: RunPaths, view: str, folds: Sequence[int], tag: int | None = None) -> pd.DataFrame:
    """Every pool image's probabilities from the member that did not train on it."""
    frames = [
        pd.read_csv(paths.probabilities(member_stem(view, k, tag), "oof"), keep_default_na=False).assign(fold=k)
        for k in folds
    ]
    return pd.concat(frames, ignore_index=True)


def test_probs(paths: RunPaths, view: str, folds: Sequence[int], tag: int | None = None) -> pd.DataFrame:
    """Test probabilities of the ensemble: the mean over the members (what the Predictor computes)."""
    frames = [pd.read_csv(paths.probabilities(member_stem(view, k, tag), "test"), keep_default_na=False) for k in folds]
    out = frames[0][["image_id", "label"]].copy()
    out[P] = np.mean([f[P].to_numpy() for f in frames], axis=0)
    out["pred"] = [CLASSES[k] for k in out[P].to_numpy().argmax(1)]
    return out


def member_test_probs(
    paths: RunPaths, view: str, folds: Sequence[int], tag: int | None = None
) -> dict[int, pd.DataFrame]:
    """Each member's own test probabilities (to show one model against the ensemble)."""
    return {
        k: pd.read_csv(paths.probabilities(member_stem(view, k, tag), "test"), keep_default_na=False) for k in folds
    }


def load_members(paths: RunPaths, view: str, folds: Sequence[int], tag: int | None = None) -> list[tuple]:
    """``[(model, info), ...]`` of one view's members, refusing a set trained by different recipes
    (``tag``: a seed study's repeats, saved beside the run's own members)."""
    members = [cls.load_classifier(member_path(paths, view, k, tag)) for k in folds]
    recipes = {repr(sorted(info["recipe"].items())) for _, info in members}
    if len(recipes) > 1:
        raise ValueError(f"the {view} members were trained with different recipes; retrain them (notebook 04)")
    return members


def check_members_leak_free(members: Sequence[tuple], split: pd.DataFrame) -> int:
    """Every member trained on training-pool images only, none of its own held-out fold and
    none of the test split; returns how many members were checked."""
    test_ids = set(split.loc[split["split"] == "test", "image_id"])
    fold_of = dict(zip(split["image_id"], split["fold"]))
    for _, info in members:
        seen = set(info["train_ids"])
        if seen & test_ids:
            raise AssertionError(f"member {info['variant']} fold {info['fold']} trained on test images")
        if any(fold_of.get(i) == info["fold"] for i in seen):
            raise AssertionError(f"member {info['variant']} fold {info['fold']} trained on its own held-out fold")
    return len(members)


def lesion_confidence(vd: cls.VariantData, ids: Sequence[str]) -> np.ndarray:
    """Stage 1's lesion confidence per image (:func:`busi_utils.core.images.lesion_confidence`),
    from the stored (leak-free) masks."""
    return np.array([float(images.lesion_confidence(vd.pred_masks[i])) for i in ids])


def _views_table(vd: cls.VariantData, views: Sequence[str], read) -> pd.DataFrame:
    """The probabilities ``read(view)`` of every view side by side (``<view>:p_<class>``), with
    the segmenter's confidence."""
    table = None
    for view in views:
        cols = {c: f"{view}:{c}" for c in P}
        p = read(view).rename(columns=cols)
        table = p.drop(columns=["pred"]) if table is None else table.merge(p[["image_id", *cols.values()]])
    table["conf"] = lesion_confidence(vd, table["image_id"])
    return table


def oof_table(vd: cls.VariantData, views: Sequence[str], folds: Sequence[int], tag: int | None = None) -> pd.DataFrame:
    """One row per pool image of the members' folds: label, fold, lesion confidence and each
    view's out-of-fold probabilities (columns ``<view>:p_<class>``): what the fusion, the
    temperature and the referral cutoff are fitted on."""
    return _views_table(vd, views, lambda view: oof_probs(vd.paths, view, folds, tag))


def test_table(vd: cls.VariantData, views: Sequence[str], folds: Sequence[int], tag: int | None = None) -> pd.DataFrame:
    """The same columns for the test split, each view the mean of its members."""
    return _views_table(vd, views, lambda view: test_probs(vd.paths, view, folds, tag))


def view_matrix(table: pd.DataFrame, view: str) -> np.ndarray:
    return table[[f"{view}:{c}" for c in P]].to_numpy()


def members_table(trained: dict[str, list[Trained]], oof: pd.DataFrame, folds: Sequence[int]) -> pd.DataFrame:
    """One row per member (``trained``: view -> members, as :func:`train_view` returns them): its
    held-out fold's macro-F1 and accuracy, read from ``oof`` (:func:`oof_table`), and its training
    time: how far members of one recipe differ, and what each costs."""
    rows = []
    for view, runs in trained.items():
        for fold, run in zip(folds, runs):
            part = oof[oof["fold"] == fold]
            scores = classification_metrics(part["label"], view_matrix(part, view))
            rows.append({"view": view, "member (held-out fold)": fold, "oof_macro_f1": scores["macro_f1"],
                         "oof_accuracy": scores["accuracy"], "train_seconds": run.info["train_seconds"]})  # fmt: skip
    return pd.DataFrame(rows)


def member_pairs(
    paths: RunPaths,
    summary: dict,
    rows: pd.DataFrame,
    conf: np.ndarray,
    keys: Sequence[str],
    baseline: str = "image_only",
) -> pd.DataFrame:
    """Member by member on ``rows`` (test images): member k's views fused by the run's rule and
    temperature, against ``baseline``'s member k (same folds, same seed). One row per (member,
    variant) in the layout of a seed study (the member in column ``seed``)."""
    out = []
    for k in summary["members"]:
        by_view = {
            v: member_test_probs(paths, v, [k])[k].set_index("image_id").loc[rows["image_id"], P].to_numpy()
            for v in [*summary["views"], baseline]
        }
        fused = fusion.decide(summary["fusion"], by_view, conf, summary["finalised"]["temperature"])
        for name, probs in (("method", fused), (baseline, by_view[baseline])):
            m = classification_metrics(rows["label"], probs)
            out.append({"seed": k, "variant": name, **{key: m[key] for key in keys}})
    return pd.DataFrame(out)
