"""Finalise a run for inference: calibrate on validation, fit the out-of-distribution check,
and export both stages to ONNX (notebook 04's last section).

The exported graphs are the whole prediction of each stage, not just the networks:

* ``unet.onnx``: a (1, 1, S, S) scan in [0, 1] -> lesion probabilities: the K fold U-Nets, each
  with its own normalisation and the mirror view (flip TTA), averaged, in one graph;
* ``classifier.onnx``: a (1, 2, S, S) input (scan, predicted mask) in [0, 1] -> the mean class
  probabilities over the TTA views (identity, mirror, seeded zoom-and-shift crops) and the
  pooled features of the identity view (for the out-of-distribution distance).

:class:`SegmenterGraph` and :class:`ClassifierGraph` are those computations as torch modules:
the torch inference path runs them directly, the export traces them, and the parity test
compares the two. ``recipe.json`` beside them holds everything else a predictor needs.
Everything here reads validation and training data only: the test split stays untouched.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import uncertainty
from .config import CLASSES
from .files import atomic_path, atomic_write_json, file_sha256, read_json
from .runfolder import EXPORT_RECIPE_SCHEMA, RunPaths, export_status, validate

CUTOFF_ACCURACY = 0.9  # "clear answer": held-out cases at or below the entropy cutoff were right 9 times in 10
OOD_QUANTILE = 0.99  # per view: flag inputs farther from the training scans than 99 % of validation scans
OPSET = 17
FINALISE_VERSION = 3  # bump when calibrate() computes something new: older entries are then redone


def tta_thetas(n: int, seed: int = 0) -> list[tuple[float, float, float]]:
    """``(scale, dx, dy)`` of the random zoom-and-shift views beyond the first two (identity
    and mirror): drawn once from ``seed``, so every prediction uses the very same views."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(max(0, n - 2)):
        scale = rng.uniform(0.9, 1.0)
        dx, dy = rng.uniform(-0.05, 0.05, 2)
        out.append((float(scale), float(dx), float(dy)))
    return out


def affine_grid(scale: float, dx: float, dy: float, shape) -> torch.Tensor:
    """Sampling grid (N, S, S, 2) of a zoom by ``scale`` and a shift by (dx, dy) (fractions of
    the half-width): computed once, so the exported graph holds it as a constant (ONNX opset 17
    has no affine_grid)."""
    theta = torch.tensor([[scale, 0, dx], [0, scale, dy]], dtype=torch.float32).expand(shape[0], 2, 3)
    return F.affine_grid(theta, list(shape), align_corners=False)


def sample_view(t: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The view of a batch (N, C, S, S) at ``grid``, all channels alike."""
    return F.grid_sample(
        t, grid.expand(len(t), -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False
    )


class SegmenterGraph(nn.Module):
    """Stage 1's prediction as :func:`busi_utils.segmentation.predict_ensemble` makes it: every
    member U-Net on its own normalisation (and its mirror view when ``flip``), then the mean."""

    def __init__(self, unets: list[nn.Module], stats: list, flip: bool, size: int):
        super().__init__()
        self.unets = nn.ModuleList([u.eval() for u in unets])
        self.stats = [(float(m), float(s)) for m, s in stats]
        self.flip, self.size = bool(flip), int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(x)
        for unet, (mean, std) in zip(self.unets, self.stats):
            z = (x - mean) / std
            p = torch.sigmoid(unet(z))
            if self.flip:
                p = (p + torch.sigmoid(unet(z.flip(-1))).flip(-1)) / 2
            total = total + p
        return total / len(self.unets)


class ClassifierGraph(nn.Module):
    """One view's test-time-augmented ensemble prediction: for each member, the mean softmax over
    ``n_views`` views (identity, mirror, then seeded zoom-and-shift crops, all channels alike);
    then the mean over members; plus the pooled features of the first member's identity view
    (for the out-of-distribution distance). The Predictor, notebook 05, the external evaluation
    and the ONNX export all run this one module. The members share one normalisation."""

    def __init__(self, classifiers, stats, n_views: int, size: int, seed: int = 0):
        super().__init__()
        members = list(classifiers) if isinstance(classifiers, (list, tuple)) else [classifiers]
        self.bodies = nn.ModuleList([m[0].eval() for m in members])
        self.heads = nn.ModuleList([m[1].eval() for m in members])
        self.register_buffer("mean", torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1))
        self.n_views, self.size, self.stats = int(n_views), int(size), stats
        shape = (1, len(stats[0]), size, size)
        self.grids = [affine_grid(*theta, shape) for theta in tta_thetas(n_views, seed)]  # constants in the export

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        views = [x] + ([x.flip(-1)] if self.n_views > 1 else []) + [sample_view(x, g) for g in self.grids]
        views = [(v - self.mean) / self.std for v in views]
        probs, feats = torch.zeros(len(x), len(CLASSES)), None
        for body, head in zip(self.bodies, self.heads):
            for v in views:
                f = body(v)
                if feats is None:
                    feats = f.mean(dim=(2, 3))
                probs = probs + torch.softmax(head(f), dim=1)
        return probs / (len(views) * len(self.bodies)), feats

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of the first member's identity view only (what the density is fitted on)."""
        return self.bodies[0]((x - self.mean) / self.std).mean(dim=(2, 3))


def view_graph(members: list[tuple], n_views: int) -> ClassifierGraph:
    """The inference graph of one view's members ``[(model, info), ...]``."""
    stats = members[0][1]["stats"]
    if any(info["stats"] != stats for _, info in members):
        raise ValueError("the members of one view must share one normalisation")
    return ClassifierGraph([m for m, _ in members], stats, n_views, int(members[0][1]["recipe"]["size"]))


def load_graphs(paths: RunPaths, tta_views: int | None = None) -> tuple[SegmenterGraph, dict, dict]:
    """The run's fold-U-Net ensemble, each stage-2 view's member ensemble as inference graphs
    (``{view: ClassifierGraph}``), and the classifier summary (``tta_views`` defaults to the
    number fixed when the run was finalised)."""
    from . import crossfit
    from . import segmentation as seg

    summary = read_json(paths.classifier_summary) or {}
    members = seg.load_ensemble(paths)
    n_views = int(tta_views or summary.get("finalised", {}).get("tta_views", 2))
    first = members[0][1]["recipe"]
    seg_graph = SegmenterGraph(
        [m for m, _ in members], [i["stats"] for _, i in members], bool(first.get("tta_flip")), int(first["size"])
    )
    graphs = {
        view: view_graph(crossfit.load_members(paths, view, summary["members"]), n_views) for view in summary["views"]
    }
    return seg_graph, graphs, summary


@torch.no_grad()
def classify_batch(graph: ClassifierGraph, x: np.ndarray, bs: int = 32, features_only: bool = False):
    """Mean TTA probabilities (N, 3) and pooled features (N, D) of inputs (N, C, S, S) in [0, 1]
    (only the features when ``features_only``)."""
    out = []
    for k in range(0, len(x), bs):
        xb = torch.from_numpy(np.ascontiguousarray(x[k : k + bs]))
        out.append(graph.features(xb).numpy() if features_only else [t.numpy() for t in graph(xb)])
    if features_only:
        return np.concatenate(out)
    return np.concatenate([p for p, _ in out]), np.concatenate([f for _, f in out])


def model_files(paths: RunPaths, summary: dict) -> list[Path]:
    """Every classifier file the method's answer depends on (each view's members)."""
    from . import crossfit

    return [crossfit.member_path(paths, v, k) for v in summary["views"] for k in summary["members"]]


def models_fingerprint(paths: RunPaths, summary: dict) -> str:
    """One SHA-256 over the members' files and the fusion: what the calibration belongs to."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(summary["fusion"], sort_keys=True).encode())
    for f in model_files(paths, summary):
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def calibrate(paths: RunPaths, vd, tta_views: int) -> dict:
    """Temperature and referral cutoff from the fused out-of-fold probabilities of the training
    pool (every part fitted without the image it scores: :func:`busi_utils.fusion.cross_validated`),
    and the out-of-distribution density from the training and validation inputs; saved into
    ``classifier_summary.json`` under ``finalised`` and to ``exports/ood.npz``. The test split
    stays untouched. Returns the ``finalised`` entry."""
    from . import crossfit, fusion
    from .metrics import classification_metrics

    _, graphs, summary = load_graphs(paths, tta_views)
    oof = crossfit.oof_table(vd, summary["views"], summary["members"])
    views = {v: crossfit.view_matrix(oof, v) for v in summary["views"]}
    y = np.array([CLASSES.index(c) for c in oof["label"]])
    cv = fusion.cross_validated(
        summary["fusion"]["kind"], y, oof["fold"].to_numpy(), views[fusion.SCAN_VIEW],
        views.get(fusion.CROP_VIEW, views[fusion.SCAN_VIEW]), oof["conf"].to_numpy(),
    )  # fmt: skip
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
    from . import segmentation as seg

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
