"""The trained pipeline of a run folder, run unchanged on new labelled images: the run's models
as the Predictor ships them (:class:`RunModels`), their answers image by image, and the one
adaptation offered (histogram matching to BUSI's intensities). Scoring and the command line
are :mod:`busi_utils.evaluation.evaluate`."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from busi_utils import data
from busi_utils.adapt import site
from busi_utils.core.config import CLASSES
from busi_utils.core.errors import RunFolderError
from busi_utils.core.files import read_json
from busi_utils.core.images import lesion_confidence, prob_to_uint8
from busi_utils.core.runfolder import RunPaths
from busi_utils.data import preprocess
from busi_utils.data.external import load_external_pair
from busi_utils.evaluation import uncertainty
from busi_utils.evaluation.report import P
from busi_utils.stage2 import fusion, shape

ADAPTATIONS = ("none", "histmatch")


def _intensity_cdf(images: np.ndarray) -> np.ndarray:
    hist = np.bincount(np.asarray(images, dtype=np.uint8).ravel(), minlength=256).astype(float)
    return np.cumsum(hist) / hist.sum()


def histogram_match(images: np.ndarray, reference_cdf: np.ndarray) -> np.ndarray:
    """Map each image's gray levels so that its histogram matches ``reference_cdf`` (the
    training scans' pooled histogram): a label-free adaptation to another scanner's gain."""
    out = np.empty_like(images)
    levels = np.arange(256)
    for k, img in enumerate(images):
        cdf = _intensity_cdf(img)
        out[k] = (
            np.interp(np.interp(img.ravel(), levels, cdf), reference_cdf, levels)
            .reshape(img.shape)
            .round()
            .astype(np.uint8)
        )
    return out


def busi_reference_cdf(paths: RunPaths, size: int) -> np.ndarray:
    """The pooled gray-level CDF of the run's training-pool scans (never test images)."""
    index = data.read_index(paths.index_csv)
    split = paths.read_split()
    store = preprocess.ArrayStore(preprocess.resized_arrays(index, size, progress=False))
    train = split.loc[split["split"] == "train", "image_id"]
    return _intensity_cdf(np.stack([store.image(i) for i in train]))


METHOD = "method"  # the Predictor's answer: both views' ensembles fused, calibrated


def _require_members(paths: RunPaths, views: list[str], members: list[int], tag: int | None, hint: str) -> None:
    """Refuse, naming the first missing file, a set of members that is not all on disk."""
    from busi_utils.stage2 import crossfit  # torch, after the CLI's checks

    missing = [crossfit.member_path(paths, v, k, tag) for v in views for k in members]
    missing = [p for p in missing if not p.exists()]
    if missing:
        raise RunFolderError(f"{missing[0]}: missing ({len(missing)} member file(s); {hint})")


class RunModels:
    """The run folder's models as notebooks 02-05 left them: the fold-U-Net ensemble, each
    view's member ensemble as inference graphs (the Predictor's), the image-only ensemble, the
    shape-alone model and, when notebook 05 trained it, the leaky ground-truth-mask ceiling."""

    def __init__(self, run_dir: str | Path):
        from busi_utils.stage2 import classification as cls  # torch, after the CLI's checks
        from busi_utils.stage2 import crossfit  # torch, after the CLI's checks
        from busi_utils.stage2.graphs import load_graphs, view_graph  # torch, after the CLI's checks

        self.paths = RunPaths(Path(run_dir).resolve())
        summary = read_json(self.paths.classifier_summary)
        if not self.paths.fold_unet(0).exists() or summary is None or "finalised" not in summary:
            raise RunFolderError(f"{self.paths.root}: no trained models (run notebooks 02-04, or `make course`)")
        self.summary, self.finalised, self.balance = summary, summary["finalised"], summary["balance"]
        self.seg_graph, self.graphs, _ = load_graphs(self.paths)
        members = summary["members"]
        _require_members(self.paths, ["image_only"], members, None, "run notebook 04")
        self.graphs["image_only"] = view_graph(crossfit.load_members(self.paths, "image_only", members), 2)
        gt = crossfit.member_path(self.paths, "image+gt_mask", 0)
        self.gt_model = cls.load_classifier(gt) if gt.exists() else None
        self.metrics = read_json(self.paths.metrics_json) or {}
        self.ood = uncertainty.load_ood(self.paths.ood_npz)  # None for a run finalised without the check
        self.seg_size = self.seg_graph.size
        self.cls_size = self.graphs["image+pred_mask"].size

    def with_members(self, tag: int | None, fusion_params: dict, temperature: float) -> RunModels:
        """A copy that answers with another training seed's classifiers: every view's and
        image-only's members saved under ``tag`` by a seed study (``None``: the run's own),
        fused by that seed's rule and calibrated by its temperature. Everything else stays the
        run's: the segmenter and the shape model (a seed study retrains stage 2 only), the
        referral cutoff; the ground-truth ceiling, trained for the run's seed alone, and the
        out-of-distribution check, fitted on the run's own members' features, are left out.
        The run's own models are not changed."""
        from busi_utils.stage2 import crossfit  # torch, after the CLI's checks
        from busi_utils.stage2.graphs import view_graph  # torch, after the CLI's checks

        members = self.summary["members"]
        _require_members(self.paths, list(self.graphs), members, tag, f"seed tag {tag}: run scripts/seed_spread.py")
        other = copy.copy(self)
        other.graphs = {}
        for view, graph in self.graphs.items():
            other.graphs[view] = view_graph(crossfit.load_members(self.paths, view, members, tag), graph.n_views)
            if other.graphs[view].size != graph.size:
                raise RunFolderError(
                    f"{view} members of seed tag {tag} read {other.graphs[view].size} px, the run's {graph.size}"
                )
        other.summary = dict(self.summary, fusion=fusion_params)
        other.finalised = dict(self.finalised, temperature=float(temperature))
        other.gt_model = None
        if tag is not None:  # the out-of-distribution density was fitted on the run's own first member's features
            other.ood = None
        return other

    def with_state(self, state: dict, params: dict | None = None) -> RunModels:
        """A copy that answers with a site's ``state`` (:func:`busi_utils.adapt.site.apply_state`:
        batch-norm statistics, fine-tuned weights) and, when given, its decision, temperature and
        referral cutoff (``params``). The run's own models are not changed."""
        other = copy.copy(self)
        other.seg_graph, other.graphs = site.apply_state(self.seg_graph, self.graphs, state)
        if params is not None:
            other.summary = dict(self.summary, fusion=params["fusion"])
            fin = {k: float(params[k]) for k in ("temperature", "entropy_cutoff")}
            other.finalised = dict(self.finalised, **fin)
        return other

    def with_site(self, name: str) -> RunModels:
        """A copy that answers as the Predictor does with ``site=name`` (a folder written by
        ``python -m busi_utils.serve.adapt``; refused when made for other models)."""
        fitted = site.read_site(self.paths.root, name)
        other = self.with_state(fitted.load_state(), fitted.answer_params())
        other.gt_model = None  # the ceiling is the run's, never adapted
        other.site_patients = set(map(str, fitted.manifest.get("data", {}).get("patients", [])))
        return other

    @property
    def variants(self) -> list[str]:
        """The rows of an evaluation: the method first, then its parts and the ablations."""
        return [METHOD, *self.graphs, "shape_alone", *(["image+gt_mask"] if self.gt_model else [])]


def method_answers(models: RunModels, view_probs: dict, conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fused before the temperature, fused and calibrated)``: the Predictor's computation."""
    raw = fusion.fuse(models.summary["fusion"], view_probs[fusion.SCAN_VIEW], view_probs[fusion.CROP_VIEW], conf)
    return raw, fusion.decide(models.summary["fusion"], view_probs, conf, float(models.finalised["temperature"]))


@dataclass(frozen=True)
class Segmented:
    """An external set as stage 1 leaves it: the scans resized to every working size (adapted
    or not) and the segmenter's lesion probabilities, 8-bit as stored for training. Stage 1
    is the run's whatever stage-2 members answer, so a seed study segments once
    (:meth:`RunModels.with_members`)."""

    ids: list[str]
    adapt: str
    stores: dict[int, preprocess.ArrayStore]
    probs: np.ndarray


def resize_external(models: RunModels, index: pd.DataFrame, adapt: str = "none", progress: bool = True) -> dict:
    """Every scan of ``index`` resized to each working size of the run (from the cache when
    present), adapted or not: ``{size: ArrayStore}`` in the index's order."""
    from busi_utils.stage2 import classification as cls  # torch, after the CLI's checks

    if adapt not in ADAPTATIONS:
        raise ValueError(f"unknown adaptation {adapt!r}: {', '.join(ADAPTATIONS)}")
    size = models.cls_size
    arrays = {
        s: preprocess.resized_arrays(index, s, progress=progress, loader=load_external_pair)
        for s in {models.seg_size, size, cls.crop_source_size(size)}
    }
    ids = index["image_id"].tolist()
    stores = {}
    for s, arr in arrays.items():
        pos = {str(i): k for k, i in enumerate(arr["ids"])}
        order = [pos[i] for i in ids]
        imgs = arr["images"][order]
        if adapt == "histmatch":
            imgs = histogram_match(imgs, busi_reference_cdf(models.paths, s))
        stores[s] = preprocess.ArrayStore({"ids": np.array(ids), "images": imgs, "masks": arr["masks"][order]})
    return stores


def segment_probs(seg_graph, images: np.ndarray) -> np.ndarray:
    """A segmenter graph over uint8 scans (N, S, S): lesion probabilities, 8-bit as stored for training."""
    import torch  # torch, after the CLI's checks

    with torch.no_grad():
        probs = np.concatenate(
            [seg_graph(torch.from_numpy(images[k : k + 32, None] / np.float32(255))).numpy()[:, 0]
             for k in range(0, len(images), 32)]
        )  # fmt: skip
    return prob_to_uint8(probs).astype(np.float32) / 255.0


def segment_stores(models: RunModels, ids: list[str], stores: dict, adapt: str = "none") -> Segmented:
    """Run the run's (or a site's) fold-U-Net ensemble over resized scans: the 8-bit lesion
    probabilities as stored for training."""
    return Segmented(list(ids), adapt, stores, segment_probs(models.seg_graph, stores[models.seg_size].images))


def segment_external(models: RunModels, index: pd.DataFrame, adapt: str = "none", progress: bool = True) -> Segmented:
    """Resize every scan of ``index`` (from the cache when present), adapt it, and run the
    fold-U-Net ensemble over it: the stage-1 half of :func:`predict_external`."""
    stores = resize_external(models, index, adapt, progress)
    return segment_stores(models, index["image_id"].tolist(), stores, adapt)


def subset(segmented: Segmented, rows: np.ndarray) -> Segmented:
    """The scans at positions ``rows`` (e.g. one side of a patient split) of ``segmented``."""
    rows = np.asarray(rows)
    ids = np.array(segmented.ids)[rows]
    stores = {
        s: preprocess.ArrayStore({"ids": ids, "images": st.images[rows], "masks": st.masks[rows]})
        for s, st in segmented.stores.items()
    }
    return Segmented([segmented.ids[k] for k in rows], segmented.adapt, stores, segmented.probs[rows])


def predict_external(
    models: RunModels,
    index: pd.DataFrame,
    adapt: str = "none",
    progress: bool = True,
    segmented: Segmented | None = None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Per image: Dice/IoU (images with a mask), the method's answer as the Predictor computes it
    (``method:p_*``, and ``method_raw:p_*`` before the temperature), every other variant's
    class probabilities, and the out-of-distribution score (``ood_score``, above 1: flagged). Returns ``(table, predicted lesion probabilities at the U-Net's size)``.
    ``segmented``: :func:`segment_external`'s answer for this index and adaptation, computed once
    for several sets of stage-2 members; by default computed here."""
    from busi_utils.stage1.segmentation import score_masks  # torch, after the CLI's checks
    from busi_utils.stage2 import classification as cls  # torch, after the CLI's checks
    from busi_utils.stage2.graphs import classify_batch  # torch, after the CLI's checks

    segmented = segmented or segment_external(models, index, adapt, progress)
    if segmented.adapt != adapt or segmented.ids != index["image_id"].tolist():
        raise ValueError("segmented: computed for other images or another adaptation than asked")
    ids, stores, probs, size = segmented.ids, segmented.stores, segmented.probs, models.cls_size
    table = index[["image_id", *(["rel_path"] if "rel_path" in index else []), "label", "patient"]].copy()
    table["label"] = table["label"].astype(str)
    seg_masks = stores[models.seg_size].masks

    scores = score_masks(probs, seg_masks)
    table["dice"] = np.where(index["has_mask"] & (index["label"].astype(str) != "normal"), scores["dice"], np.nan)
    table["iou"] = np.where(table["dice"].notna(), scores["iou"], np.nan)
    table["pred_area"] = (probs >= 0.5).mean(axis=(1, 2))
    pred_masks = dict(zip(ids, probs))
    store, crops = stores[size], stores[cls.crop_source_size(size)]
    view_probs = {}
    for view, graph in models.graphs.items():
        x = cls.build_inputs(view, ids, store, pred_masks, size, crops)
        view_probs[view], features = classify_batch(graph, x)
        if view == fusion.SCAN_VIEW and models.ood is not None:  # the Predictor's check, on the same inputs
            views = {"features": features, "scan": uncertainty.scan_statistics(x[:, 0])}
            table["ood_score"] = uncertainty.ood_score(views, models.ood)
    conf = lesion_confidence(probs)
    aspect = (index["height"] / index["width"]).to_numpy() if "height" in index else None
    features = shape.shape_matrix(list(probs), aspect)
    view_probs["shape_alone"] = fusion.predict_shape_alone(models.summary["shape_alone"], features)
    raw, view_probs[METHOD] = method_answers(models, view_probs, conf)
    view_probs["method_raw"] = raw
    if models.gt_model is not None:
        model, info = models.gt_model
        p = cls.predict_tta(model, cls.build_inputs("image+gt_mask", ids, store, None, size), info["stats"])
        p[~index["has_mask"].to_numpy()] = np.nan  # no ground truth, no ceiling
        view_probs["image+gt_mask"] = p
    for v, p in view_probs.items():
        for k, c in enumerate(CLASSES):
            table[f"{v}:p_{c}"] = p[:, k]
    table["conf"] = conf
    return table, probs


def variant_probs(table: pd.DataFrame, variant: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The rows a variant could score (all, or those with a mask for the GT-mask ceiling) and its probabilities."""
    cols = [f"{variant}:{p}" for p in P]
    rows = table[table[cols].notna().all(axis=1)]
    return rows, rows[cols].to_numpy()


def method_tta(table: pd.DataFrame, models: RunModels) -> tuple[np.ndarray, np.ndarray]:
    """The method as the Predictor answers: fused, calibrated probabilities, and their entropy
    (what the referral rule compares with BUSI's cutoff)."""
    calibrated = table[[f"{METHOD}:{c}" for c in P]].to_numpy()
    return calibrated, uncertainty.entropy(calibrated)
