"""The course's training loop is fastai's: ``training.fit`` on a fine-tuning recipe ends with the
very weights ``Learner.fine_tune`` gives, and on a one-cycle recipe with those of ``fit_one_cycle``."""

from __future__ import annotations

import copy

import fastai.callback.schedule  # noqa: F401  (patches fit_one_cycle and fine_tune into Learner)
import torch
import torch.nn as nn
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.learner import Learner

from busi_utils.stage1 import training


def tiny_learner() -> Learner:
    """A body and a head (two parameter groups, so freezing means something), on a fixed regression."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    x = torch.randn(64, 4)
    items = list(zip(x, x.sum(1, keepdim=True)))
    dls = DataLoaders(DataLoader(items, bs=16), DataLoader(items, bs=16))
    learn = Learner(
        dls, model, loss_func=nn.MSELoss(), splitter=lambda m: [list(m[0].parameters()), list(m[2].parameters())]
    )
    training.quiet(learn)
    return learn


def weights(learn: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learn.model.parameters()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x, y, atol=1e-7) for x, y in zip(a, b))


def test_fit_on_a_fine_tuning_recipe_is_fastais_fine_tune():
    recipe = {"pretrained": True, "freeze_epochs": 1, "epochs": 2}
    ours, theirs = tiny_learner(), tiny_learner()
    torch.manual_seed(1)
    history, _ = training.fit(ours, recipe, 1e-2)
    torch.manual_seed(1)
    theirs.fine_tune(2, 1e-2, freeze_epochs=1)
    assert same(weights(ours), weights(theirs))
    assert list(history["phase"]) == ["frozen", "all", "all"]
    other = tiny_learner()
    torch.manual_seed(1)
    training.fit(other, {**recipe, "lr_mult": 10}, 1e-2)  # another body rate: other weights (the check can fail)
    assert not same(weights(other), weights(theirs))


def test_fit_without_a_frozen_phase_is_one_cycle_with_the_recipes_rates():
    recipe = {"pretrained": True, "freeze_epochs": 0, "epochs": 2, "lr_mult": 10, "pct_start": 0.25}
    ours, theirs = tiny_learner(), tiny_learner()
    torch.manual_seed(1)
    training.fit(ours, recipe, 1e-2)
    torch.manual_seed(1)
    theirs.fit_one_cycle(2, slice(1e-3, 1e-2), pct_start=0.25)
    assert same(weights(ours), weights(theirs))


def test_one_fastai_sgd_step_is_the_four_lines_chapter_2_writes_out():
    def hand_step(model, xb, yb, lr):
        loss = nn.MSELoss()(model(xb), yb)
        loss.backward()
        torch.optim.SGD(model.parameters(), lr=lr).step()

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    xb, yb = torch.randn(16, 4), torch.randn(16, 1)
    ours, theirs, other = (copy.deepcopy(base) for _ in range(3))
    hand_step(ours, xb, yb, 0.05)
    training.fastai_sgd_step(theirs, xb, yb, nn.MSELoss(), 0.05)
    training.fastai_sgd_step(other, xb, yb, nn.MSELoss(), 0.01)
    assert same(list(ours.parameters()), list(theirs.parameters()))
    assert not same(list(ours.parameters()), list(other.parameters()))  # another rate, other weights
