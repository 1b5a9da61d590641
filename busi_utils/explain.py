"""Explainability and uncertainty: Grad-CAM and test-time-augmentation entropy.

Grad-CAM (Selvaraju et al. 2017) weights the last convolutional feature maps by the
gradient of the class score: where the network *looked* for that class. It is a coarse
heat map (the last ResNet stage is 1/32 of the input), a hint, not a proof.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .uncertainty import entropy


def _last_conv_stage(model: nn.Module) -> nn.Module:
    """The layer whose output Grad-CAM weighs. Our classifiers are Sequential(body, head); for a
    timm EfficientNet body that is its last BatchNorm + activation (``bn2``, 1/32 of the input),
    for a torchvision ResNet body the last residual stage."""
    body = model[0]
    return body.bn2 if hasattr(body, "conv_head") else list(body.children())[-1]


def grad_cam(model: nn.Module, x: np.ndarray, stats, target: int | None = None) -> tuple[np.ndarray, int]:
    """Heat map in [0, 1] at input size for one input (C, S, S), and the class it explains
    (the predicted one unless ``target`` is given)."""
    model.eval()
    layer = _last_conv_stage(model)
    acts, grads = {}, {}
    h1 = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    h2 = layer.register_full_backward_hook(lambda m, gi, go: grads.__setitem__("g", go[0]))
    try:
        mean = torch.tensor(stats[0]).view(1, -1, 1, 1)
        std = torch.tensor(stats[1]).view(1, -1, 1, 1)
        xb = ((torch.from_numpy(x[None]) - mean) / std).requires_grad_(True)
        logits = model(xb)
        target = int(logits.argmax(1)) if target is None else target
        model.zero_grad()
        logits[0, target].backward()
        weights = grads["g"].mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * acts["a"]).sum(1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    finally:
        h1.remove()
        h2.remove()
    return (cam / cam.max() if cam.max() > 0 else cam), target


def tta_thetas(n: int, seed: int = 0) -> list[tuple[float, float, float]]:
    """``(scale, dx, dy)`` of the random zoom-and-shift views beyond the first two (identity
    and mirror): drawn once from ``seed``, so the exported model bakes in the very same views."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(max(0, n - 2)):
        scale = rng.uniform(0.9, 1.0)
        dx, dy = rng.uniform(-0.05, 0.05, 2)
        out.append((float(scale), float(dx), float(dy)))
    return out


def affine_grid(scale: float, dx: float, dy: float, shape) -> torch.Tensor:
    """Sampling grid (N, S, S, 2) of a zoom by ``scale`` and a shift by (dx, dy) (fractions of
    the half-width): computed once, so an exported graph can hold it as a constant."""
    theta = torch.tensor([[scale, 0, dx], [0, scale, dy]], dtype=torch.float32).expand(shape[0], 2, 3)
    return F.affine_grid(theta, list(shape), align_corners=False)


def sample_view(t: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """The view of a batch (N, C, S, S) at ``grid``, all channels alike."""
    return F.grid_sample(
        t, grid.expand(len(t), -1, -1, -1), mode="bilinear", padding_mode="border", align_corners=False
    )


def tta_views(x: np.ndarray, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` views of a batch (N, C, S, S): identity, left-right flip, then small random
    zoom-and-shift crops (:func:`tta_thetas`), applied to all channels alike."""
    views = [x, x[..., ::-1].copy()][:n]
    t = torch.from_numpy(x)
    views += [sample_view(t, affine_grid(*theta, t.shape)).numpy() for theta in tta_thetas(n, seed)]
    return views


def tta_predict(model: nn.Module, x: np.ndarray, stats, n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean class probabilities over ``n`` augmented views, and their predictive entropy
    (uncalibrated; :mod:`busi_utils.uncertainty` applies the temperature)."""
    from .classification import predict_proba

    probs = np.mean([predict_proba(model, v, stats) for v in tta_views(x, n, seed)], axis=0)
    return probs, entropy(probs)
