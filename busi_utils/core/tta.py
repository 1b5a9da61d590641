"""Test-time augmentation (TTA), written once: the views of a batch (the scan, its mirror image,
then seeded zoom-and-shift crops) and the mean of a model's prediction over them.

Stage 1's training-time prediction, stage 2's members, the inference graphs and so the Predictor
and its ONNX export all average through :func:`averaged`. The course does not use fastai's
``learn.tta``: that runs the training augmentations at random through a DataLoader, so its views
change from call to call and cannot be frozen into an exported graph; these views are fixed
tensors (the mirror, and sampling grids drawn once from a seed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


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


def view_grids(n_views: int, channels: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    """The sampling grids of the views beyond identity and mirror (empty for ``n_views <= 2``)."""
    return [affine_grid(*theta, (1, channels, size, size)) for theta in tta_thetas(n_views, seed)]


def averaged(
    predict: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    n_views: int = 2,
    grids: Sequence[torch.Tensor] = (),
    spatial: bool = False,
) -> torch.Tensor:
    """The mean of ``predict`` over the first ``n_views`` views of ``x`` (N, C, S, S): the batch
    itself, its left-right mirror, then one view per sampling grid.

    ``spatial``: the prediction is an image (a lesion map), so the mirrored view's answer is
    mirrored back before averaging. Zoomed views of a map would need their inverse warp, which
    the course does not use, so ``spatial`` allows the mirror only.
    """
    extra = list(grids)[: max(0, n_views - 2)]
    if spatial and extra:
        raise ValueError("a spatial prediction is averaged over the scan and its mirror only")
    total = predict(x)
    if n_views > 1:
        mirrored = predict(x.flip(-1))
        total = total + (mirrored.flip(-1) if spatial else mirrored)
    for grid in extra:
        total = total + predict(sample_view(x, grid))
    return total / (1 + (n_views > 1) + len(extra))
