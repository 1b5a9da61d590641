"""Chapter 8's stage-1 study: a fold U-Net fine-tuned on k labelled development patients, and
scored on the *other* development patients (never an evaluation patient): Dice on their lesion
scans, and presence AUC on all their scans, the evidence stage 1 gives the question "is there a
lesion?". Which layers to tune, and whether to rehearse the home scans, are its choices; the
methods are :mod:`busi_utils.adapt.fewshot`'s."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from busi_utils.adapt import fewshot
from busi_utils.core.images import lesion_confidence
from busi_utils.evaluation.pipeline import RunModels, Segmented, segment_probs
from busi_utils.stage1.segmentation import score_masks


def _held_out_scores(seg_graph, scans: Segmented, rows: np.ndarray, lesion: np.ndarray, size: int) -> tuple:
    """Of ``seg_graph`` on the scans at positions ``rows``: mean Dice on the lesion scans (with
    their masks), and the presence AUC (its lesion confidence ranking lesion scans above normal
    ones; NaN when the rows hold one kind only)."""
    store = scans.stores[size]
    probs = segment_probs(seg_graph, store.images[rows])
    auc = roc_auc_score(lesion, lesion_confidence(probs)) if 0 < lesion.mean() < 1 else np.nan
    return _mean_dice(probs[lesion], store.masks[rows][lesion]), float(auc)


def _mean_dice(probs: np.ndarray, masks: np.ndarray) -> float:
    return float(np.mean(score_masks(probs, masks)["dice"]))


def finetune_study(
    models: RunModels,
    scans: Segmented,
    index: pd.DataFrame,
    k: int,
    draws: int,
    steps: int,
    lr: float,
    layers: tuple[str, ...] = ("encoder", "all"),
    seed: int = 0,
    progress=None,
    home: tuple[np.ndarray, np.ndarray] | None = None,
    home_check: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Stage 1 tuned on ``k`` labelled development patients (``scans``: theirs, rows of ``index``),
    scored on the *other* development patients: Dice on their lesion scans, and presence AUC on
    all their scans (does the tuned U-Net tell lesion scans from normal ones better?). Which
    layers to tune is chosen without an evaluation patient. A choice ending in ``+home`` (e.g.
    ``"encoder+home"``) rehearses ``home`` (the first fold U-Net's own BUSI training scans and
    masks) in every batch; ``home_check`` (BUSI lesion scans and masks it never trained on: its
    held-out fold) measures what the tuning costs at home (``home_dice_*``: did it forget?). One
    U-Net of the ensemble (the first fold's, with its mirror view) keeps the study within a
    chapter's budget. One row per draw and choice of layers."""
    g = models.seg_graph
    one = type(g)(list(g.unets[:1]), list(g.stats[:1]), g.flip, g.size)  # the graph class, without importing serve
    patients = index["patient"].astype(str).to_numpy()
    lesion = (index["label"].astype(str) != "normal").to_numpy() & index["has_mask"].to_numpy()
    normal = (index["label"].astype(str) == "normal").to_numpy()
    pool = sorted(set(patients))
    k = min(k, len(pool) - 1)
    columns = ["draw", "layers", "k", "train_scans", "held_out_lesion_scans", "held_out_scans",
               "dice_before", "dice_after", "auc_before", "auc_after", "home_dice_before", "home_dice_after"]  # fmt: skip
    if k < 1:  # one development patient: nobody left to score on
        return pd.DataFrame(columns=columns)
    at_home = lambda graph: _home_dice(graph, home_check)  # noqa: E731
    rows, before, home_before = [], {}, at_home(one)  # the untuned U-Net's scores: once per draw, once at home
    plan = [(d, draw, lay) for d, draw in enumerate(fewshot.draw_patients(pool, k, draws, seed)) for lay in layers]
    for d, draw, choice in progress(plan) if progress else plan:
        lay, rehearse = _choice(choice, home)
        train = np.isin(patients, draw)
        held = np.flatnonzero(~train & (lesion | normal))
        if not lesion[held].any() or not train.any():
            continue
        store = scans.stores[models.seg_size]
        tuned = fewshot.finetune_segmenter(
            g.unets[0], g.stats[0], store.images[train], store.masks[train], steps=steps, lr=lr, layers=lay,
            seed=seed + d, rehearse=rehearse,
        )  # fmt: skip
        after = type(g)([tuned], list(g.stats[:1]), g.flip, g.size)
        score = lambda graph: _held_out_scores(graph, scans, held, lesion[held], models.seg_size)  # noqa: E731
        if d not in before:
            before[d] = score(one)
        (d0, a0), (d1, a1) = before[d], score(after)
        rows.append(
            {"draw": d, "layers": choice, "k": k, "train_scans": int(train.sum()),
             "held_out_lesion_scans": int(lesion[held].sum()), "held_out_scans": len(held),
             "dice_before": d0, "dice_after": d1, "auc_before": a0, "auc_after": a1,
             "home_dice_before": home_before, "home_dice_after": at_home(after)}
        )  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _choice(choice: str, home: tuple[np.ndarray, np.ndarray] | None) -> tuple[str, tuple | None]:
    """``"encoder"`` -> the layers, no rehearsal; ``"encoder+home"`` -> the layers, rehearsing ``home``."""
    layers, plus, mix = choice.partition("+")
    if plus and mix != "home":
        raise ValueError(f"{choice!r}: a choice is layers, optionally followed by '+home'")
    if mix and home is None:
        raise ValueError(f"{choice!r} rehearses the home scans: pass home=(images, masks)")
    return layers, home if mix else None


def _home_dice(seg_graph, check: tuple[np.ndarray, np.ndarray] | None) -> float:
    """Mean Dice of ``seg_graph`` on home lesion scans it never trained on (NaN without them)."""
    if check is None:
        return float("nan")
    return _mean_dice(segment_probs(seg_graph, check[0]), check[1])
