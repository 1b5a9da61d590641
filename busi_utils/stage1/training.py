"""One training loop for both stages: fastai's one-cycle schedule, and fastai's ``fine_tune``
recipe when the network starts from ImageNet weights.

``fine_tune`` (fastai, ``Learner.fine_tune``) trains in two phases: first only the new layers
(the decoder or the classification head) while the pretrained encoder is frozen, so random new
layers cannot wreck the pretrained features with large early gradients; then everything, with
*discriminative learning rates*: the pretrained layers move ``lr_mult`` times more slowly than the
head (``slice(lr / lr_mult, lr)``; fastai's default is 100, the profiles set their own). This
module runs the same two ``fit_one_cycle`` calls rather than ``Learner.fine_tune`` itself, for
one reason: ``fine_tune`` keeps only the last phase's history, and the chapters plot both.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from busi_utils.core.schedule import phases, uses_fine_tune  # re-exported: training.phases is the recipe's schedule

__all__ = ["Trained", "uses_fine_tune", "phases", "fit", "fastai_sgd_step", "total_epochs", "temporary_folder", "quiet"]


@dataclass
class Trained:
    """What ``get_or_train`` of either stage returns: the model, its saved info (recipe, seed,
    training list, normalisation), the per-epoch history, and whether it was trained now
    (``False``: loaded from the run folder, where the same recipe had already trained it)."""

    model: Any
    info: dict
    history: pd.DataFrame
    trained: bool


def total_epochs(recipe: dict) -> int:
    """Epochs actually run: the frozen phase (if any) plus the main phase."""
    return int(recipe["epochs"]) + (int(recipe.get("freeze_epochs", 0)) if uses_fine_tune(recipe) else 0)


def fit(learn, recipe: dict, lr: float, cbs: list | None = None) -> tuple[pd.DataFrame, float]:
    """Train ``learn`` by ``recipe`` (its :func:`phases`); returns ``(history, seconds)``, one
    history row per epoch with a ``phase`` column (``frozen`` / ``all``). ``cbs`` are passed to
    every phase."""
    cbs = list(cbs or [])
    rows: list[tuple[str, list]] = []
    start = time.perf_counter()
    for k, ph in enumerate(phases(recipe, lr)):
        if ph["body"] is None:
            learn.freeze()
            rates = slice(ph["head"])
        else:
            if k:
                rows += [("frozen", v) for v in learn.recorder.values]
                learn.unfreeze()
            rates = ph["head"] if ph["body"] == ph["head"] else slice(ph["body"], ph["head"])
        learn.fit_one_cycle(ph["epochs"], rates, pct_start=ph["pct_start"], div=ph["div"], cbs=cbs)
    rows += [("all", v) for v in learn.recorder.values]
    seconds = time.perf_counter() - start
    names = [n for n in learn.recorder.metric_names[1:] if n != "time"]
    history = pd.DataFrame([v[: len(names)] for _, v in rows], columns=names)
    history.insert(0, "epoch", range(len(history)))
    history.insert(1, "phase", [p for p, _ in rows])
    return history, seconds


def fastai_sgd_step(model, xb, yb, loss_func, lr: float) -> None:
    """One batch of fastai's ``Learner.fit`` on ``model`` (in place): the batch ``(xb, yb)`` as the
    whole training set, plain SGD at ``lr``, no weight decay. Chapter 2 checks its hand-written
    training step against this, so what a step *is* in fastai is tested, not assumed."""
    from fastai.data.core import DataLoaders  # fastai: loaded where used (slow import)
    from fastai.data.load import DataLoader  # fastai: loaded where used (slow import)
    from fastai.learner import Learner  # fastai: loaded where used (slow import)
    from fastai.optimizer import SGD  # fastai: loaded where used (slow import)

    one_batch = DataLoaders(DataLoader([(xb, yb)], bs=None), DataLoader([(xb, yb)], bs=None), device="cpu")
    learn = Learner(one_batch, model, loss_func=loss_func, opt_func=SGD)
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, lr, wd=0)


@contextmanager
def temporary_folder(prefix: str) -> Iterator[Path]:
    """A scratch folder for fastai's best-epoch checkpoint, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def quiet(learn) -> None:
    """Remove fastai's progress bars (fold models in a loop, tests)."""
    from fastai.callback.progress import (
        ProgressCallback,  # fastai: loaded where used (slow import)
    )

    learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, ProgressCallback)])
    learn.logger = lambda *args, **kwargs: None  # without the bar, fastai would print each epoch's row
