"""The inference graphs: stage 1's fold ensemble and each stage-2 view's member ensemble as one
torch module each, test-time augmentation (the mirror image and small affine views) built in,
so the Predictor, the evaluation and the ONNX export all compute exactly the same thing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from busi_utils.core.config import CLASSES
from busi_utils.core.files import read_json
from busi_utils.core.runfolder import RunPaths
from busi_utils.stage1 import segmentation as seg
from busi_utils.stage2 import crossfit


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
    """Stage 1's prediction as :func:`busi_utils.stage1.segmentation.predict_ensemble` makes it: every
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
