"""Images and merged masks resized once to the working size and kept as arrays.

Decoding a 1000-pixel PNG costs more than a training step on a 128-pixel one, so no epoch
should do it: the arrays are stored in the cache, keyed by dataset hash and size, and
loaded into memory (780 images at 128 px are 13 MB).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from busi_utils.core.config import cache_dir
from busi_utils.core.files import atomic_path
from busi_utils.core.images import resize_pair
from busi_utils.data import dataset_hash, load_pair


def resized_arrays(index: pd.DataFrame, size: int, progress: bool = True, loader=load_pair) -> dict[str, np.ndarray]:
    """``{"ids", "images" (N,S,S) uint8, "masks" (N,S,S) bool}`` for every indexed image,
    from the cache when present (written atomically, so a crash never leaves half a file).
    ``loader(row) -> (gray, mask)`` reads one index row (BUSI's by default; external sets
    bring their own)."""
    path = cache_dir() / "resized" / f"{dataset_hash(index)}-{size}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if set(index["image_id"]) <= set(arrays["ids"]):
            return arrays
    ids, images, masks = [], [], []
    for row in tqdm(list(index.itertuples()), desc=f"resizing to {size}px", disable=not progress):
        img, m = resize_pair(*loader(row), size)
        ids.append(row.image_id)
        images.append(img)
        masks.append(m)
    arrays = {"ids": np.array(ids), "images": np.stack(images), "masks": np.stack(masks)}
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
    return arrays


class ArrayStore:
    """Look up resized images and masks by image id."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.images, self.masks = arrays["images"], arrays["masks"]
        self.pos = {str(i): k for k, i in enumerate(arrays["ids"])}

    def image(self, image_id: str) -> np.ndarray:
        return self.images[self.pos[image_id]]

    def mask(self, image_id: str) -> np.ndarray:
        return self.masks[self.pos[image_id]]

    def take(self, image_ids) -> tuple[np.ndarray, np.ndarray]:
        """The images and masks of ``image_ids``, in that order (N, S, S) each."""
        rows = [self.pos[str(i)] for i in image_ids]
        return self.images[rows], self.masks[rows]
