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
from .runfolder import EXPORT_RECIPE_SCHEMA, RunPaths, validate

ENTROPY_QUANTILE = 0.8  # refer the 20 % most uncertain validation cases' worth of entropy
OOD_QUANTILE = 0.99  # per view: flag inputs farther from the training scans than 99 % of validation scans
OPSET = 17
FINALISE_VERSION = 2  # bump when calibrate() computes something new: older entries are then redone


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
    """A classifier's test-time-augmented prediction: mean softmax over ``n_views`` views
    (identity, mirror, then seeded zoom-and-shift crops, all channels alike), plus the pooled
    features of the first view. The Predictor, notebook 05, the external evaluation and the
    ONNX export all run this one module."""

    def __init__(self, classifier: nn.Module, stats, n_views: int, size: int, seed: int = 0):
        super().__init__()
        self.body, self.head = classifier[0].eval(), classifier[1].eval()
        self.register_buffer("mean", torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1))
        self.n_views, self.size, self.stats = int(n_views), int(size), stats
        shape = (1, len(stats[0]), size, size)
        self.grids = [affine_grid(*theta, shape) for theta in tta_thetas(n_views, seed)]  # constants in the export

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body((x - self.mean) / self.std)
        probs = torch.softmax(self.head(feats), dim=1)
        views = ([x.flip(-1)] if self.n_views > 1 else []) + [sample_view(x, g) for g in self.grids]
        for v in views:
            probs = probs + torch.softmax(self.head(self.body((v - self.mean) / self.std)), dim=1)
        return probs / (1 + len(views)), feats.mean(dim=(2, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of the identity view only (what the density is fitted on)."""
        return self.body((x - self.mean) / self.std).mean(dim=(2, 3))


def load_graphs(paths: RunPaths, tta_views: int | None = None) -> tuple[SegmenterGraph, ClassifierGraph, dict]:
    """The run's fold-U-Net ensemble and method classifier as inference graphs, and the summary
    (``tta_views`` defaults to the number fixed when the run was finalised)."""
    from . import classification as cls
    from . import segmentation as seg

    summary = read_json(paths.classifier_summary) or {}
    members = seg.load_ensemble(paths)
    model, info = cls.load_classifier(paths.models / summary["method_model"])
    n_views = int(tta_views or summary.get("finalised", {}).get("tta_views", 2))
    first = members[0][1]["recipe"]
    seg_graph = SegmenterGraph(
        [m for m, _ in members], [i["stats"] for _, i in members], bool(first.get("tta_flip")), int(first["size"])
    )
    cls_graph = ClassifierGraph(model, info["stats"], n_views, int(info["recipe"]["size"]))
    return seg_graph, cls_graph, summary


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


def calibrate(paths: RunPaths, vd, tta_views: int) -> dict:
    """Temperature, entropy cutoff and the out-of-distribution density, from the method's
    training and validation inputs only; saved into ``classifier_summary.json`` under
    ``finalised`` and to ``exports/ood.npz``. Returns the ``finalised`` entry."""
    from .metrics import classification_metrics

    _, graph, summary = load_graphs(paths, tta_views)
    x_valid, y_valid = vd.arrays("image+pred_mask", "valid")
    x_train, _ = vd.arrays("image+pred_mask", "train")
    p_valid, f_valid = classify_batch(graph, x_valid)
    f_train = classify_batch(graph, x_train, features_only=True)
    temperature = uncertainty.fit_temperature(y_valid, p_valid)
    calibrated = uncertainty.apply_temperature(p_valid, temperature)
    ood = uncertainty.fit_ood(
        {"features": f_train, "scan": uncertainty.scan_statistics(x_train[:, 0])},
        {"features": f_valid, "scan": uncertainty.scan_statistics(x_valid[:, 0])},
        OOD_QUANTILE,
    )
    finalised = {
        "version": FINALISE_VERSION,
        "tta_views": int(tta_views),
        "temperature": temperature,
        "entropy_cutoff": float(np.quantile(uncertainty.entropy(calibrated), ENTROPY_QUANTILE)),
        "entropy_quantile": ENTROPY_QUANTILE,
        "ood_quantile": OOD_QUANTILE,
        "ood_thresholds": {v: float(ood[f"{v}_threshold"]) for v in uncertainty.OOD_VIEWS},
        "valid_accuracy_tta": classification_metrics(y_valid, calibrated)["accuracy"],
        "n_train": len(x_train),
        "n_valid": len(x_valid),
        "classifier_sha256": file_sha256(paths.models / summary["method_model"]),  # what these numbers belong to
    }
    with atomic_path(paths.ood_npz) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **ood)
    summary["finalised"] = finalised
    atomic_write_json(paths.classifier_summary, summary)
    return finalised


def export_onnx(paths: RunPaths) -> dict:
    """Write ``unet.onnx``, ``classifier.onnx`` and ``recipe.json`` (last, atomically: its
    presence means a complete export). Needs :func:`calibrate` first. Returns the recipe."""
    from . import segmentation as seg

    seg_graph, cls_graph, summary = load_graphs(paths)
    fin = summary["finalised"]
    start = time.perf_counter()
    _export(seg_graph, torch.zeros(1, 1, seg_graph.size, seg_graph.size), paths.unet_onnx, ["mask_prob"])
    _export(
        cls_graph,
        torch.zeros(1, 2, cls_graph.size, cls_graph.size),
        paths.classifier_onnx,
        ["probabilities", "features"],
    )
    method = paths.models / summary["method_model"]
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
            "classifier": {
                "file": paths.classifier_onnx.name,
                "size": cls_graph.size,
                "mean": list(cls_graph.stats[0]),
                "std": list(cls_graph.stats[1]),
                "tta_views": cls_graph.n_views,
                "fingerprint": file_sha256(method),
                "source": method.name,
                "inputs": ["image", "pred_mask"],
            },
            "temperature": fin["temperature"],
            "entropy_cutoff": fin["entropy_cutoff"],
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
    the export were made from the current model files with the same TTA views. Returns
    ``(finalised, recipe, done_now)``."""
    from .infer import export_status

    summary = read_json(paths.classifier_summary) or {}
    finalised = summary.get("finalised", {})
    recipe, _ = export_status(paths)
    method_sha = file_sha256(paths.models / summary["method_model"])
    wanted = {"version": FINALISE_VERSION, "tta_views": tta_views, "classifier_sha256": method_sha}
    if recipe and all(finalised.get(k) == v for k, v in wanted.items()):
        return finalised, recipe, False
    finalised = calibrate(paths, vd, tta_views)
    return finalised, export_onnx(paths), True
