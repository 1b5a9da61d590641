"""Finalise a run for inference: calibrate on validation, fit the out-of-distribution check,
and export both stages to ONNX (notebook 04's last section).

The exported graphs are the whole prediction of each stage, not just the networks:

* ``unet.onnx``: a (1, 1, S, S) scan in [0, 1] -> lesion probabilities: the K fold U-Nets, each
  with its own normalisation and the mirror view (flip TTA), averaged, in one graph;
* ``classifier.onnx``: a (1, 2, S, S) input (scan, predicted mask) in [0, 1] -> the mean class
  probabilities over the TTA views (identity, mirror, seeded zoom-and-shift crops) and the
  pooled features of the identity view (for the out-of-distribution distance).

:class:`SegmenterGraph` and :class:`ClassifierGraph` (:mod:`busi_utils.stage2.graphs`) are those computations as torch modules:
the torch inference path runs them directly, the export traces them, and the parity test
compares the two. ``recipe.json`` beside them holds everything else a predictor needs.
Everything here reads validation and training data only: the test split stays untouched.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from busi_utils.core.config import CLASSES
from busi_utils.core.errors import RunFolderError
from busi_utils.core.files import atomic_path, atomic_write_json, file_sha256, read_json
from busi_utils.core.runfolder import EXPORT_RECIPE_SCHEMA, RunPaths, export_status, validate
from busi_utils.core.tta import affine_grid, sample_view, tta_thetas
from busi_utils.evaluation import uncertainty
from busi_utils.evaluation.metrics import classification_metrics
from busi_utils.stage1 import segmentation as seg
from busi_utils.stage2 import crossfit, fusion
from busi_utils.stage2.graphs import (
    ClassifierGraph,
    SegmenterGraph,
    classify_batch,
    load_graphs,
    view_graph,
)

__all__ = [  # this module's own names, and those it gathers from graphs and tta (chapters call them as export.<name>)
    "affine_grid",
    "calibrate",
    "ClassifierGraph",
    "classify_batch",
    "CUTOFF_ACCURACY",
    "export_onnx",
    "finalise_run",
    "FINALISE_VERSION",
    "load_graphs",
    "model_files",
    "models_fingerprint",
    "OOD_QUANTILE",
    "oof_fused",
    "OPSET",
    "sample_view",
    "SegmenterGraph",
    "tta_thetas",
    "view_graph",
]

CUTOFF_ACCURACY = 0.9  # "clear answer": held-out cases at or below the entropy cutoff were right 9 times in 10
OOD_QUANTILE = 0.99  # per view: flag inputs farther from the training scans than 99 % of validation scans
OPSET = 17
FINALISE_VERSION = 3  # bump when calibrate() computes something new: older entries are then redone


def model_files(paths: RunPaths, summary: dict) -> list[Path]:
    """Every classifier file the method's answer depends on (each view's members)."""
    return [crossfit.member_path(paths, v, k) for v in summary["views"] for k in summary["members"]]


def models_fingerprint(paths: RunPaths, summary: dict) -> str:
    """One SHA-256 over the members' files and the fusion: what the calibration belongs to."""
    h = hashlib.sha256(json.dumps(summary["fusion"], sort_keys=True).encode())
    for f in model_files(paths, summary):
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def oof_fused(vd, summary: dict) -> tuple[pd.DataFrame, np.ndarray]:
    """The training pool's out-of-fold table and its fused probabilities, every part fitted
    without the image it scores (:func:`busi_utils.stage2.fusion.cross_validated`): what the
    temperature and the referral cutoff are fitted on, never the test split."""
    oof = crossfit.oof_table(vd, summary["views"], summary["members"])
    views = {v: crossfit.view_matrix(oof, v) for v in summary["views"]}
    y = np.array([CLASSES.index(c) for c in oof["label"]])
    cv = fusion.cross_validated(
        summary["fusion"]["kind"], y, oof["fold"].to_numpy(), views[fusion.SCAN_VIEW],
        views.get(fusion.CROP_VIEW, views[fusion.SCAN_VIEW]), oof["conf"].to_numpy(),
    )  # fmt: skip
    return oof, cv


def calibrate(paths: RunPaths, vd, tta_views: int) -> dict:
    """Temperature and referral cutoff from the fused out-of-fold probabilities of the training
    pool (every part fitted without the image it scores: :func:`busi_utils.stage2.fusion.cross_validated`),
    and the out-of-distribution density from the training and validation inputs; saved into
    ``classifier_summary.json`` under ``finalised`` and to ``exports/ood.npz``. The test split
    stays untouched. Returns the ``finalised`` entry."""
    _, graphs, summary = load_graphs(paths, tta_views)
    oof, cv = oof_fused(vd, summary)
    temperature = uncertainty.fit_temperature(oof["label"], cv)
    calibrated = uncertainty.apply_temperature(cv, temperature)
    earned = uncertainty.earned_cutoff(oof["label"], calibrated, CUTOFF_ACCURACY)
    graph = graphs[fusion.SCAN_VIEW]
    x_valid, _ = vd.arrays(fusion.SCAN_VIEW, "valid")
    x_train, _ = vd.arrays(fusion.SCAN_VIEW, "train")
    f_valid, f_train = (classify_batch(graph, x, features_only=True) for x in (x_valid, x_train))
    ood = uncertainty.fit_ood(
        {"features": f_train, "scan": uncertainty.scan_statistics(x_train[:, 0])},
        {"features": f_valid, "scan": uncertainty.scan_statistics(x_valid[:, 0])},
        OOD_QUANTILE,
    )
    finalised = {
        "version": FINALISE_VERSION,
        "tta_views": int(tta_views),
        "temperature": temperature,
        "entropy_cutoff": earned["cutoff"],
        "cutoff_accuracy": earned["accuracy"],
        "clear_share": earned["share"],
        "cutoff_target": CUTOFF_ACCURACY,
        "ood_quantile": OOD_QUANTILE,
        "ood_thresholds": {v: float(ood[f"{v}_threshold"]) for v in uncertainty.OOD_VIEWS},
        "oof_accuracy": classification_metrics(oof["label"], calibrated)["accuracy"],
        "oof_macro_f1": classification_metrics(oof["label"], calibrated)["macro_f1"],
        "n_oof": len(oof),
        "models_sha256": models_fingerprint(paths, summary),  # what these numbers belong to
    }
    with atomic_path(paths.ood_npz) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **ood)
    summary["finalised"] = finalised
    atomic_write_json(paths.classifier_summary, summary)
    return finalised


def export_onnx(paths: RunPaths) -> dict:
    """Write ``unet.onnx``, one ``<view>.onnx`` per stage-2 view and ``recipe.json`` (last,
    atomically: its presence means a complete export). Needs :func:`calibrate` first."""
    seg_graph, graphs, summary = load_graphs(paths)
    fin = summary["finalised"]
    start = time.perf_counter()
    _export(seg_graph, torch.zeros(1, 1, seg_graph.size, seg_graph.size), paths.unet_onnx, ["mask_prob"])
    views = {}
    for view, graph in graphs.items():
        target = paths.view_onnx(view)
        _export(
            graph, torch.zeros(1, len(graph.stats[0]), graph.size, graph.size), target, ["probabilities", "features"]
        )
        views[view] = {
            "file": target.name,
            "size": graph.size,
            "channels": len(graph.stats[0]),
            "members": [
                {"source": f.name, "fingerprint": file_sha256(f)}
                for f in model_files(paths, {**summary, "views": [view]})
            ],
        }
    recipe = validate(
        {
            "classes": list(CLASSES),
            "segmenter": {
                "file": paths.unet_onnx.name,
                "size": seg_graph.size,
                "flip_tta": seg_graph.flip,
                "threshold": 0.5,
                "members": [{"source": p.name, "fingerprint": file_sha256(p)} for p in seg.ensemble_files(paths)],
            },
            "views": views,
            "tta_views": int(fin["tta_views"]),
            "fusion": summary["fusion"],
            "temperature": fin["temperature"],
            "entropy_cutoff": fin["entropy_cutoff"],
            "cutoff_accuracy": fin["cutoff_accuracy"],
            "ood": {"file": paths.ood_npz.name, "views": list(uncertainty.OOD_VIEWS), "quantile": fin["ood_quantile"]},
            "mask_storage": "uint8",  # the predicted mask is rounded to 8 bits before the classifier, as in training
            "opset": OPSET,
            "export_seconds": round(time.perf_counter() - start, 1),
        },
        EXPORT_RECIPE_SCHEMA,
        str(paths.export_recipe),
    )
    atomic_write_json(paths.export_recipe, recipe)
    return recipe


def _export(graph: nn.Module, example: torch.Tensor, path: Path, outputs: list[str]) -> None:
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            graph.eval(),
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=outputs,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )


def finalise_run(paths: RunPaths, vd, tta_views: int) -> tuple[dict, dict, bool]:
    """Calibrate and export (notebook 04), or resume: nothing is redone when the calibration and
    the export were made from the current member files and fusion with the same TTA views.
    Returns ``(finalised, recipe, done_now)``."""
    summary = read_json(paths.classifier_summary) or {}
    finalised = summary.get("finalised", {})
    recipe, _ = export_status(paths)
    wanted = {"version": FINALISE_VERSION, "tta_views": tta_views, "models_sha256": models_fingerprint(paths, summary)}
    if recipe and all(finalised.get(k) == v for k, v in wanted.items()):
        return finalised, recipe, False
    finalised = calibrate(paths, vd, tta_views)
    return finalised, export_onnx(paths), True


def export_site_onnx(
    paths: RunPaths, seg_graph: nn.Module, graphs: dict, params: dict, folder: Path, name: str
) -> dict:
    """A site's adapted graphs in ONNX (``unet.onnx`` and one file per view, named as the run's)
    and their ``recipe.json``: the run's recipe with the site's decision, temperature and
    referral cutoff. The light Predictor answers with them (``Predictor(run, site=name)``)."""
    recipe = read_json(paths.export_recipe)
    if recipe is None:
        raise RunFolderError(f"{paths.export_recipe}: missing; the run has no ONNX export to adapt (run notebook 04)")
    folder.mkdir(parents=True, exist_ok=True)
    _export(
        seg_graph,
        torch.zeros(1, 1, seg_graph.size, seg_graph.size),
        folder / recipe["segmenter"]["file"],
        ["mask_prob"],
    )
    for view, v in recipe["views"].items():
        graph = graphs[view]
        _export(
            graph,
            torch.zeros(1, len(graph.stats[0]), graph.size, graph.size),
            folder / v["file"],
            ["probabilities", "features"],
        )
    site_recipe = {
        **recipe,
        "fusion": params["fusion"],
        "temperature": float(params["temperature"]),
        "entropy_cutoff": float(params["entropy_cutoff"]),
        "site": name,
    }
    atomic_write_json(folder / paths.export_recipe.name, site_recipe)
    return site_recipe
