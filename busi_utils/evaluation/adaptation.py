"""Chapter 8 on a run: the pipeline adapted to a new site, and what each adaptation buys.

The methods are :mod:`busi_utils.adapt`'s; here they meet the run's models
(:class:`~busi_utils.evaluation.pipeline.RunModels`). Everything is fitted on the site's
*development* patients (their scans alone for the label-free steps, their labels as well for the
few-label ones) and scored on its evaluation patients, which nothing here reads but the scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from busi_utils import data
from busi_utils.adapt import batchnorm as abn
from busi_utils.adapt import fewshot, prior, shift
from busi_utils.core.config import CLASSES
from busi_utils.evaluation import metrics, report, uncertainty
from busi_utils.evaluation.pipeline import RunModels, Segmented, predict_external, segment_stores, subset
from busi_utils.evaluation.report import P
from busi_utils.stage2 import classification as cls
from busi_utils.stage2 import crossfit, fusion

BN_PARTS = ("none", "classifiers", "segmenter", "both")  # where batch-norm statistics are re-estimated
SITE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)  # a site's presence may turn lower than BUSI's
CUTOFF_ACCURACY = 0.9


def batchnorm_state(models: RunModels, scans: Segmented, part: str) -> dict:
    """AdaBN for the run's graphs on a site's unlabelled ``scans`` (:data:`BN_PARTS`): the
    state a site stores. The classifiers are adapted on the inputs they will see, built with
    the masks of the (adapted, when asked) segmenter."""
    if part not in BN_PARTS:
        raise ValueError(f"unknown batch-norm part {part!r}: {', '.join(BN_PARTS)}")
    state: dict = {}
    if part in ("segmenter", "both"):
        g = models.seg_graph
        x = torch.from_numpy(scans.stores[models.seg_size].images[:, None] / np.float32(255))
        unets = [abn.adapt_batchnorm(u, abn.batches((x - m) / s)) for u, (m, s) in zip(g.unets, g.stats)]
        state["segmenter"], state["segmenter_kind"] = [abn.batchnorm_state(u) for u in unets], "batchnorm"
        scans = segment_stores(models.with_state(state), scans.ids, scans.stores, scans.adapt)
    if part in ("classifiers", "both"):
        masks = dict(zip(scans.ids, scans.probs))
        state["views"] = {}
        for view, g in models.graphs.items():
            crops = scans.stores[cls.crop_source_size(g.size)]
            x = torch.from_numpy(cls.build_inputs(view, scans.ids, scans.stores[g.size], masks, g.size, crops))
            state["views"][view] = [
                abn.batchnorm_state(abn.adapt_batchnorm(b, abn.batches((x - g.mean) / g.std))) for b in g.bodies
            ]
    return state


def state_part(state: dict) -> str:
    """Which networks a site's ``state`` re-estimated (:data:`BN_PARTS`), read from the state itself."""
    seg, views = bool(state.get("segmenter")), bool(state.get("views"))
    return {(False, False): "none", (False, True): "classifiers", (True, False): "segmenter", (True, True): "both"}[
        (seg, views)
    ]


def view_matrices(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return tuple(table[[f"{v}:{c}" for c in P]].to_numpy() for v in (fusion.SCAN_VIEW, fusion.CROP_VIEW))


def refit_decision(rows: pd.DataFrame, base: dict) -> dict:
    """The site's decision, temperature and referral cutoff refitted on labelled ``rows`` (a
    per-image table of the site's adaptation patients). Where the rows cannot fit a part (no
    normal scan, or no lesion), that part stays ``base``'s."""
    y = np.array([CLASSES.index(c) for c in rows["label"]])
    p_scan, p_crop = view_matrices(rows)
    conf = rows["conf"].to_numpy()
    params = dict(base)
    lesion = y != CLASSES.index("normal")
    if lesion.any() and not lesion.all():
        params["fusion"] = fusion.fit(base["fusion"]["kind"], y, p_scan, p_crop, conf, grid=SITE_GRID)
    fused = fusion.fuse(params["fusion"], p_scan, p_crop, conf)
    if len(set(y)) > 1:
        params["temperature"] = uncertainty.fit_temperature(rows["label"], fused)
        calibrated = uncertainty.apply_temperature(fused, params["temperature"])
        params["entropy_cutoff"] = uncertainty.earned_cutoff(rows["label"], calibrated, CUTOFF_ACCURACY)["cutoff"]
    return params


def answer(table: pd.DataFrame, params: dict) -> np.ndarray:
    """The calibrated answers of a per-image table under a site's decision ``params``."""
    p_scan, p_crop = view_matrices(table)
    fused = fusion.fuse(params["fusion"], p_scan, p_crop, table["conf"].to_numpy())
    return uncertainty.apply_temperature(fused, float(params["temperature"]))


def run_params(models: RunModels) -> dict:
    """The run's own decision, temperature and cutoff (what a site starts from)."""
    fin = models.finalised
    return {
        "fusion": models.summary["fusion"],
        "temperature": fin["temperature"],
        "entropy_cutoff": fin["entropy_cutoff"],
    }


def scores(labels, probs: np.ndarray, dice: np.ndarray | None = None) -> dict:
    """Macro-F1, lesions called normal, normal scans called a lesion, benign-vs-malignant AUC
    (and mean Dice when given): the learning curve's measures, without intervals."""

    m = metrics.classification_metrics(list(labels), probs)
    out = {
        k: m.get(k, np.nan)
        for k in ("macro_f1", "lesions_called_normal", "normals_called_lesion", "benign_malignant_auc")
    }
    if dice is not None:
        out["dice"] = float(np.nanmean(dice))
    return out


def learning_curve(
    dev: pd.DataFrame, evaluation: pd.DataFrame, base: dict, ks, draws: int, seed: int, progress=None, n_boot: int = 0
) -> pd.DataFrame:
    """For each ``k`` and draw of ``k`` development patients: the decision refitted on their
    scans alone (:func:`refit_decision`), scored on the evaluation patients. One row per fit;
    with ``n_boot``, each fit's macro-F1 also carries its patient-bootstrap interval
    (``macro_f1_ci95``)."""
    pool = sorted(dev["patient"].astype(str).unique())
    rows = []
    plan = [
        (k, d, draw)
        for k in ks
        for d, draw in enumerate(fewshot.draw_patients(pool, min(k, len(pool)), draws, seed + k))
    ]
    for k, d, patients in progress(plan) if progress else plan:
        picked = dev[dev["patient"].astype(str).isin(patients)]
        params = refit_decision(picked, base)
        answers = answer(evaluation, params)
        if n_boot:
            ci = report.scores_with_ci(evaluation["label"], answers, n_boot, seed, evaluation["patient"])[
                "macro_f1_ci95"
            ]
        rows.append(
            {
                "k": k,
                "draw": d,
                "patients": " ".join(patients),
                "scans": len(picked),
                "lesion_scans": int((picked["label"] != "normal").sum()),
                "threshold": params["fusion"].get("threshold"),
                **scores(evaluation["label"], answers, evaluation["dice"].to_numpy()),
                **({"macro_f1_ci95": ci} if n_boot else {}),
            }
        )
    return pd.DataFrame(rows)


def development_scans(segmented: Segmented, index: pd.DataFrame, patients) -> Segmented:
    """The scans of the named (development) patients only: what a label-free fit may read."""
    keep = np.flatnonzero(index["patient"].astype(str).isin({str(p) for p in patients}).to_numpy())
    return subset(segmented, keep)


LABEL_FREE = (
    "classifiers"  # chosen on BUS-UCLM's development patients (chapter 8): the segmenter's own statistics travel better
)


def training_mix(models: RunModels) -> np.ndarray:
    """The class mix of the run's BUSI training pool, counted (the mix its *answers* carry is another:
    the mean of :func:`oof_answers`, where EM starts)."""

    split = models.paths.read_split()
    labels = (
        data.read_index(models.paths.index_csv)
        .set_index("image_id")
        .loc[split.loc[split["split"] == "train", "image_id"], "label"]
    )
    counts = labels.astype(str).value_counts().reindex(CLASSES, fill_value=0).to_numpy(float)
    return counts / counts.sum()


def estimated_prior(table: pd.DataFrame, params: dict, home: np.ndarray | None) -> dict:
    """The site's class mix as EM estimates it from the unlabelled answers, starting from
    ``home``, the mix the run's answers carry (the mean of BUSI's calibrated out-of-fold answers,
    :func:`oof_answers`): recorded, never applied (chapter 8 shows why). Without ``home``
    (BUSI's answers not at hand), nothing is estimated, and the record says so."""
    if home is None:
        return {"method": "em", "estimate": None, "why": "BUSI's out-of-fold answers were not available"}
    mix, iterations = prior.em_prior(answer(table, params), home)
    return {
        "method": "em",
        "from": dict(zip(CLASSES, np.round(home, 4).tolist())),
        "estimate": dict(zip(CLASSES, mix.round(4).tolist())),
        "iterations": iterations,
    }


def fit_site(models: RunModels, index: pd.DataFrame, scans: Segmented, labelled: bool, part: str = LABEL_FREE):
    """Everything a site stores, fitted on ``scans`` (the site's adaptation scans, rows of
    ``index``): batch-norm statistics for ``part`` (label-free), and with ``labelled`` the
    decision, temperature and referral cutoff refitted on their labels. Returns ``(state,
    params, table)``: the state for :meth:`RunModels.with_state`, the answer parameters, and
    the adaptation scans' per-image table under the adapted models."""

    state = batchnorm_state(models, scans, part) if part != "none" else {}
    adapted = models.with_state(state)
    if "segmenter" in state:
        scans = segment_stores(adapted, scans.ids, scans.stores, scans.adapt)
    table, _ = predict_external(adapted, index, segmented=scans, progress=False)
    params = run_params(models)
    if labelled:
        params = refit_decision(table, params)
    return state, params, table


def oof_answers(models: RunModels) -> dict:
    """BUSI's out-of-fold answers under the run's decision rule, each fitted without the image
    it answers (:func:`busi_utils.stage2.fusion.cross_validated`), calibrated as the Predictor
    does: the home confusions BBSE inverts, and (their mean) the mix the answers carry, where EM
    must start."""

    split = models.paths.read_split()
    vd = cls.load_variant_data(
        models.paths, data.read_index(models.paths.index_csv), split, models.cls_size, progress=False
    )
    oof = crossfit.oof_table(vd, models.summary["views"], models.summary["members"])
    y = np.array([CLASSES.index(str(c)) for c in oof["label"]])
    p_scan, p_crop = view_matrices(oof)
    kind = models.summary["fusion"]["kind"]
    fused = fusion.cross_validated(kind, y, oof["fold"].to_numpy(), p_scan, p_crop, oof["conf"].to_numpy())
    calibrated = uncertainty.apply_temperature(fused, float(models.finalised["temperature"]))
    return {"y": y, "answer": fused.argmax(1), "probs": calibrated}


def domain_auc(home: np.ndarray, site: np.ndarray, site_groups=None, n_boot: int = 0, seed: int = 0) -> tuple:
    """The domain classifier's held-out AUC (:func:`shift.held_out_domain_scores`) and its 95%
    bootstrap interval, each home scan and each site patient drawn whole (``[None, None]`` without
    ``n_boot``); a resample holding one set only has no AUC and is left out."""
    y, scores, groups = shift.held_out_domain_scores(home, site, site_groups, seed=seed)
    auc = lambda rows: roc_auc_score(y[rows], scores[rows]) if 0 < y[rows].mean() < 1 else np.nan  # noqa: E731
    interval = list(metrics.bootstrap_ci(auc, len(y), n_boot, seed, groups=groups)) if n_boot else [None, None]
    return float(auc(np.arange(len(y)))), interval
