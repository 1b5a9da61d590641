"""Small builders shared by several test modules (imported as ``helpers``: pytest puts tests/ on the path)."""

from __future__ import annotations


def png_header_only(path, width: int, height: int) -> None:
    """A tiny PNG whose header claims ``width`` x ``height`` (what an attacker uploads)."""
    from busi_utils.data.synthetic import png_claiming

    path.write_bytes(png_claiming(width, height))


def tiny_course_classifier_recipe(**overrides) -> dict:
    """The course's stage-2 recipe (plain head, label smoothing, scan augmentation, (x - 0.5) / 0.5)
    on a tiny, untrained Lite0 at 32 px: what the tests train when they need a real classifier."""
    recipe = {"arch": "lite0", "pretrained": False, "size": 32, "epochs": 1, "batch_size": 8, "lr": 1e-3}
    recipe.update(head="linear", label_smoothing=0.1, aug="scan", norm="half", keep="last")
    return {**recipe, **overrides}
