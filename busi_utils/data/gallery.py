"""Picture grids of BUSI's own files: scans with their merged masks, and the images that carry
several mask files. They read the files (:mod:`busi_utils.data`), so they sit in the data stage;
the grid itself is :func:`busi_utils.core.viz.show_grid`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from busi_utils.core.images import overlay
from busi_utils.core.viz import show_grid
from busi_utils.data.busi import load_image, load_mask


def show_index_rows(rows: pd.DataFrame, with_mask: bool = True, ncols: int = 4, extra_title: str = ""):
    """Each row's image, optionally with its merged mask over it."""
    images, titles = [], []
    for r in rows.itertuples():
        img = load_image(r.image_path)
        if with_mask:
            img = overlay(img, load_mask(r.mask_paths, img.shape))
        images.append(img)
        titles.append(f"{r.image_id}" + (f"\n{getattr(r, extra_title)}" if extra_title else ""))
    return show_grid(images, titles, ncols=ncols)


def show_multi_mask(rows: pd.DataFrame, max_rows: int = 4):
    """Image, each mask file, and their union, one row per multi-mask image."""
    rows = rows.head(max_rows)
    ncols = 1 + int(rows["n_masks"].max()) + 1
    images, titles = [], []
    for r in rows.itertuples():
        img = load_image(r.image_path)
        paths = r.mask_paths.split(";")
        cells = [img] + [load_mask([p], img.shape).astype(float) for p in paths]
        cells += [np.zeros_like(img)] * (ncols - 1 - len(cells))
        cells.append(overlay(img, load_mask(paths, img.shape)))
        images += cells
        titles += (
            [r.image_id]
            + [p.rsplit("/", 1)[-1].replace(r.image_id, "") for p in paths]
            + [""] * (ncols - 2 - len(paths))
            + ["merged"]
        )
    return show_grid(images, titles, ncols=ncols, size=2.5)
