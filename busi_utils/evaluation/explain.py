"""Explainability: Grad-CAM. (Test-time augmentation lives with the inference graphs in
:mod:`busi_utils.serve.export`; entropy and calibration in :mod:`busi_utils.evaluation.uncertainty`.)

Grad-CAM (Selvaraju et al. 2017) weights the last convolutional feature maps by the
gradient of the class score: where the network *looked* for that class. It is a coarse
heat map (the last stage of the Lite0 encoder is 1/32 of the input: 3 x 3 cells at 96 px), a
hint, not a proof. :func:`show_cases` draws it beside the scan and its predicted mask.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from busi_utils.core import viz
from busi_utils.core.config import CLASSES


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


def show_cases(model: nn.Module, info: dict, x: np.ndarray, answers, picks) -> None:
    """Two panels per picked case: the scan with its predicted mask (cyan), and the Grad-CAM map of
    the class ``answers`` predicted (a frame with image_id, label, pred, rows aligned with ``x``)."""
    cells, titles = [], []
    for k in picks:
        cam, target = grad_cam(model, x[k], info["stats"], target=CLASSES.index(answers["pred"][k]))
        scan = (x[k, 0] * 255).astype(np.uint8)
        cells += [
            viz.overlay(scan, x[k, 1] >= 0.5, color=(0, 1, 1), alpha=0.35),
            viz.overlay(scan, cam, color=(1, 0.1, 0), alpha=0.6),
        ]
        titles += [f"{answers['image_id'][k]} (true {answers['label'][k]})", f"Grad-CAM: {CLASSES[target]}"]
    if cells:
        viz.show_grid(cells, titles, ncols=4, size=2.8)
