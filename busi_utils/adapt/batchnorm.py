"""Batch-norm statistics re-estimated on a new site's scans (AdaBN; Li et al. 2016).

A batch-norm layer normalises each channel with the mean and variance it saw in training. On
another scanner the features have other means and variances, so every layer after the first
is fed what it never saw. AdaBN keeps every learned weight and recomputes only those running
statistics from the new site's *unlabelled* scans: no label, no gradient, one pass."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def batchnorm_layers(module: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """Every batch-norm layer of ``module`` with its qualified name."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def adapt_batchnorm(module: nn.Module, batches: Iterable[torch.Tensor], forward: Callable | None = None) -> nn.Module:
    """A copy of ``module`` whose batch-norm running statistics are the plain average over
    ``batches`` (momentum ``None``: every batch counts alike, whatever their order); every
    weight, and every other layer's behaviour (dropout stays off), is unchanged.
    ``forward(copy, batch)`` runs one batch (default: ``copy(batch)``)."""
    adapted = copy.deepcopy(module).eval()
    layers = batchnorm_layers(adapted)
    if not layers:
        raise ValueError(f"{type(module).__name__}: no batch-norm layer to adapt")
    momenta = [m.momentum for _, m in layers]
    for _, m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    for xb in batches:
        (forward or (lambda mod, x: mod(x)))(adapted, xb)
        seen += len(xb)
    if seen < 2:
        raise ValueError("batch-norm statistics need at least two scans")
    for (_, m), momentum in zip(layers, momenta):
        m.momentum = momentum
        m.eval()
    return adapted


def batchnorm_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The batch-norm running statistics of ``module``, by qualified name: all AdaBN changes."""
    return {f"{name}.{b}": getattr(m, b).detach().clone() for name, m in batchnorm_layers(module) for b in BUFFERS}


def load_batchnorm_state(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Put ``state`` (:func:`batchnorm_state`) into ``module``, in place; a key that is not one
    of its batch-norm buffers, or a missing one, is an error."""
    expected = set(batchnorm_state(module))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"batch-norm state does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    module.load_state_dict(state, strict=False)
    return module


def batches(x: torch.Tensor, size: int = 64) -> list[torch.Tensor]:
    """``x`` cut into batches of ``size`` (the last may be smaller, but never a single scan)."""
    cuts = list(range(0, len(x), size))
    if len(cuts) > 1 and len(x) - cuts[-1] < 2:
        cuts.pop()
    return [x[a:b] for a, b in zip(cuts, [*cuts[1:], len(x)])]
