"""The inference graphs: stage 1's fold ensemble and each stage-2 view's member ensemble as one
torch module each, test-time augmentation (the mirror image and small affine views) built in,
so the Predictor, the evaluation and the ONNX export all compute exactly the same thing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from busi_utils.core.config import CLASSES
from busi_utils.core.files import read_json
from busi_utils.core.layout import channels_last
from busi_utils.core.runfolder import RunPaths
from busi_utils.core.tta import averaged, view_grids
from busi_utils.stage1 import segmentation as seg
from busi_utils.stage2 import crossfit


class SegmenterGraph(nn.Module):
    """Stage 1's prediction as :func:`busi_utils.stage1.segmentation.predict_ensemble` makes it: every
    member U-Net on its own normalisation (and its mirror view when ``flip``), then the mean. The
    members are put in eval mode and channels-last layout, in place (:mod:`busi_utils.core.layout`)."""

    def __init__(self, unets: list[nn.Module], stats: list, flip: bool, size: int):
        super().__init__()
        self.unets = nn.ModuleList([channels_last(u.eval()) for u in unets])
        self.stats = [(float(m), float(s)) for m, s in stats]
        self.flip, self.size = bool(flip), int(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(x)
        for unet, (mean, std) in zip(self.unets, self.stats):
            lesion_map = lambda z, u=unet: torch.sigmoid(u(z))  # noqa: E731
            total = total + averaged(lesion_map, (x - mean) / std, 2 if self.flip else 1, spatial=True)
        return total / len(self.unets)


class ClassifierGraph(nn.Module):
    """One view's test-time-augmented ensemble prediction: for each member, the mean softmax over
    ``n_views`` views (identity, mirror, then seeded zoom-and-shift crops, all channels alike);
    then the mean over members; plus the pooled features of the first member's identity view
    (for the out-of-distribution distance). The Predictor, notebook 05, the external evaluation
    and the ONNX export all run this one module. The members share one normalisation; their bodies
    are put in eval mode and channels-last layout, in place (:mod:`busi_utils.core.layout`)."""

    def __init__(self, classifiers, stats, n_views: int, size: int, seed: int = 0):
        super().__init__()
        members = list(classifiers) if isinstance(classifiers, (list, tuple)) else [classifiers]
        self.bodies = nn.ModuleList([channels_last(m[0].eval()) for m in members])
        self.heads = nn.ModuleList([m[1].eval() for m in members])
        self.register_buffer("mean", torch.tensor(stats[0], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(stats[1], dtype=torch.float32).view(1, -1, 1, 1))
        self.n_views, self.size, self.stats = int(n_views), int(size), stats
        self.grids = view_grids(n_views, len(stats[0]), size, seed)  # constants in the export

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats: list[torch.Tensor] = []  # the first member's identity view's pooled features

        def member(body: nn.Module, head: nn.Module):
            def predict(v: torch.Tensor) -> torch.Tensor:
                f = body((v - self.mean) / self.std)
                if not feats:
                    feats.append(f.mean(dim=(2, 3)))
                return torch.softmax(head(f), dim=1)

            return predict

        probs = torch.zeros(len(x), len(CLASSES))
        for body, head in zip(self.bodies, self.heads):
            probs = probs + averaged(member(body, head), x, self.n_views, self.grids)
        return probs / len(self.bodies), feats[0]

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
