"""A recipe's learning-rate schedule, as the ``fit_one_cycle`` calls it makes: pure Python, so
the diagrams can draw it (:func:`busi_utils.core.diagrams.schedule`) and stage 1 and stage 2 can
run it (:func:`busi_utils.stage1.training.fit`) from one definition."""

from __future__ import annotations


def uses_fine_tune(recipe: dict) -> bool:
    """True for a pretrained network with a frozen first phase in its recipe."""
    return bool(recipe.get("pretrained")) and int(recipe.get("freeze_epochs", 0)) > 0


def phases(recipe: dict, lr: float) -> list[dict]:
    """The ``fit_one_cycle`` calls a recipe makes, in order: epochs, the head's and the pretrained
    body's peak rates (``body`` None while it is frozen), ``pct_start`` and ``div``. :func:`busi_utils.stage1.training.fit`
    runs them; the chapters draw them (:func:`busi_utils.core.diagrams.schedule`)."""
    epochs = int(recipe["epochs"])
    if uses_fine_tune(recipe):  # fastai's fine_tune: frozen, then everything at half the rate
        half = lr / 2
        body = half / float(recipe.get("lr_mult", 100))
        return [
            {"epochs": int(recipe["freeze_epochs"]), "head": lr, "body": None, "pct_start": 0.99, "div": 25.0},
            {"epochs": epochs, "head": half, "body": body, "pct_start": 0.3, "div": 5.0},
        ]
    if recipe.get("pretrained") and recipe.get("lr_mult"):  # no frozen phase, discriminative rates
        pct = float(recipe.get("pct_start", 0.25))
        return [{"epochs": epochs, "head": lr, "body": lr / float(recipe["lr_mult"]), "pct_start": pct, "div": 25.0}]
    return [{"epochs": epochs, "head": lr, "body": lr, "pct_start": 0.25, "div": 25.0}]  # one rate for all
