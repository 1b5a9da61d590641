"""Test-time augmentation is written once (``busi_utils.core.tta``), and the members' prediction,
stage 1's prediction and the inference graphs all compute it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from busi_utils.core import config, tta
from busi_utils.stage2 import classification as cls
from busi_utils.stage2.graphs import ClassifierGraph


def tiny_member(seed: int = 0) -> nn.Sequential:
    """A body (feature maps) and a head (pool + linear), as the course's classifiers are built."""
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    return nn.Sequential(body, head).eval()


def test_averaged_is_the_mean_over_the_views():
    x = torch.rand(2, 1, 8, 8)
    f = lambda v: v * torch.arange(8.0)  # noqa: E731  (not mirror-symmetric)
    assert torch.equal(tta.averaged(f, x, 1), f(x))
    assert torch.allclose(tta.averaged(f, x, 2), (f(x) + f(x.flip(-1))) / 2)
    spatial = tta.averaged(f, x, 2, spatial=True)
    assert torch.allclose(spatial, (f(x) + f(x.flip(-1)).flip(-1)) / 2)
    assert torch.allclose(tta.averaged(f, x.flip(-1), 2, spatial=True), spatial.flip(-1))  # mirror-equivariant
    grids = tta.view_grids(4, 1, 8)
    assert len(grids) == 2
    four = tta.averaged(f, x, 4, grids)
    assert torch.allclose(four, (f(x) + f(x.flip(-1)) + sum(f(tta.sample_view(x, g)) for g in grids)) / 4)
    with pytest.raises(ValueError, match="mirror only"):
        tta.averaged(f, x, 4, grids, spatial=True)


def test_the_members_prediction_and_the_graph_compute_the_same_tta():
    member = tiny_member()
    x = np.random.default_rng(0).random((5, 2, 16, 16), dtype=np.float32)
    stats = ([0.5, 0.5], [0.5, 0.5])
    by_member = cls.predict_tta(member, x, stats)
    plain = cls.predict_proba(member, x, stats)
    assert not np.allclose(by_member, plain, atol=1e-5)  # the mirror view changed something
    graph = ClassifierGraph([member], stats, n_views=2, size=16)
    with torch.no_grad():
        probs, feats = graph(torch.from_numpy(x))
    assert np.allclose(probs.numpy(), by_member, atol=1e-6)
    assert feats.shape == (5, 4)


def test_no_other_inference_code_mirrors_a_batch():
    """Written once: apart from ``core/tta.py``, only the training augmentation flips tensors
    (stage 1's, and the few-label fine-tuning's random mirror images in ``adapt/fewshot.py``)."""
    package = config.repo_root() / "busi_utils"
    flipping = sorted(
        str(p.relative_to(package)) for p in package.rglob("*.py") if ".flip(" in p.read_text(encoding="utf-8")
    )
    assert flipping == ["adapt/fewshot.py", "core/tta.py", "stage1/augment.py"], flipping
