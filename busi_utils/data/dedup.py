"""The duplicate audit: the same scan must never sit on both sides of a split.

Two steps, because each alone fails: a content hash finds byte-identical files only;
a perceptual hash (``imagehash.phash``) also matches re-saved, resized or slightly cropped
copies but has false alarms, so every perceptual match is *confirmed* by a pixel
similarity (normalised cross-correlation of small blurred thumbnails, maximised over
small shifts so a few pixels of crop do not matter).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from busi_utils.core.files import cached_csv
from busi_utils.data import load_image

THUMB = 48


def image_fingerprint(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit perceptual hash as bools, zero-mean unit-norm blurred thumbnail)."""
    import imagehash  # imagehash: loaded where used (slow import)

    pil = Image.fromarray(gray)
    bits = imagehash.phash(pil).hash.flatten()
    thumb = np.asarray(pil.resize((THUMB, THUMB), Image.BILINEAR), dtype=np.float32)
    thumb = ndimage.gaussian_filter(thumb, 1.0)
    return bits, thumb


def fingerprints(index: pd.DataFrame, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Hash bits (N, 64) and thumbnails (N, 48, 48) of every indexed image."""
    bits, thumbs = [], []
    for path in tqdm(index["image_path"], desc="fingerprints", disable=not progress):
        b, t = image_fingerprint(load_image(path))
        bits.append(b)
        thumbs.append(t)
    return np.array(bits), np.array(thumbs)


def _ncc(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-9))


def pixel_similarity(a: np.ndarray, b: np.ndarray, max_shift: int = 3) -> float:
    """Best normalised cross-correlation of two thumbnails over shifts of up to
    ``max_shift`` pixels (the overlap only): 1.0 for the same picture, tolerant of
    resizing (thumbnails share a size) and of small crops (a shift)."""
    best = -1.0
    n = a.shape[0]
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            ya, yb = slice(max(dy, 0), n + min(dy, 0)), slice(max(-dy, 0), n + min(-dy, 0))
            xa, xb = slice(max(dx, 0), n + min(dx, 0)), slice(max(-dx, 0), n + min(-dx, 0))
            best = max(best, _ncc(a[ya, xa], b[yb, xb]))
    return best


def find_duplicate_pairs(
    index: pd.DataFrame,
    max_hamming: int = 14,
    min_similarity: float = 0.95,
    progress: bool = True,
    prints: tuple[np.ndarray, np.ndarray] | None = None,
) -> pd.DataFrame:
    """All duplicate pairs: ``kind`` exact (same sha256) or near (phash within
    ``max_hamming`` bits and pixel similarity at least ``min_similarity``).

    The defaults were read off BUSI: every pair within 8 bits has similarity above 0.96;
    beyond 14 bits chance look-alikes dominate. What this finds at 10-14 bits is mostly
    consecutive frames of one examination, which belong together for the same reason.
    """
    bits, thumbs = prints if prints is not None else fingerprints(index, progress)
    ids = index["image_id"].to_numpy()
    sha = index["sha256"].to_numpy()
    b = bits.astype(np.int32)
    hamming = b @ (1 - b).T + (1 - b) @ b.T  # pairwise differing bits, in one matrix product
    rows = []
    for i, j in zip(*np.nonzero(np.triu(hamming <= max_hamming, k=1) | np.triu(sha[:, None] == sha[None, :], k=1))):
        if sha[i] == sha[j]:
            rows.append((i, j, "exact", int(hamming[i, j]), 1.0))
            continue
        sim = pixel_similarity(thumbs[i], thumbs[j])
        if sim >= min_similarity:
            rows.append((i, j, "near", int(hamming[i, j]), round(sim, 4)))
    pairs = pd.DataFrame(rows, columns=["i", "j", "kind", "hamming", "similarity"])
    pairs.insert(0, "image_a", ids[pairs["i"]] if len(pairs) else [])
    pairs.insert(1, "image_b", ids[pairs["j"]] if len(pairs) else [])
    return pairs


def group_duplicates(index: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Join pairs into groups (connected components): one row per image with
    ``group`` (the image's own id when it has no duplicate), ``group_size`` and
    ``cross_label`` (the group holds images filed under different classes)."""
    n = len(index)
    graph = coo_matrix((np.ones(len(pairs)), (pairs["i"].to_numpy(), pairs["j"].to_numpy())), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    out = index[["image_id", "label"]].copy()
    out["label"] = out["label"].astype(str)
    out["component"] = comp
    sizes = out.groupby("component")["image_id"].transform("size")
    first = out.groupby("component")["image_id"].transform("first")
    out["group"] = np.where(sizes > 1, "dup:" + first, out["image_id"])
    out["group_size"] = sizes
    out["cross_label"] = out.groupby("component")["label"].transform("nunique") > 1
    return out.drop(columns="component")


def summarise_groups(groups: pd.DataFrame) -> pd.DataFrame:
    """One row per duplicate group (size > 1): members, their labels, cross-label flag."""
    dup = groups[groups["group_size"] > 1]
    return (
        dup.groupby("group")
        .agg(
            size=("image_id", "size"),
            members=("image_id", " | ".join),
            labels=("label", lambda s: "/".join(sorted(set(s)))),
            cross_label=("cross_label", "first"),
        )
        .reset_index()
        .sort_values(["cross_label", "size"], ascending=False)
        .reset_index(drop=True)
    )


THRESHOLDS = {"max_hamming": 14, "min_similarity": 0.95}  # find_duplicate_pairs' defaults


def groups_file(groups_csv, **thresholds) -> Path:
    """Where the groups of these thresholds are cached: the run's own file for the defaults, a
    file named by the thresholds otherwise (an exercise never replaces the run's groups)."""
    t = {**THRESHOLDS, **thresholds}
    path = Path(groups_csv)
    if t == THRESHOLDS:
        return path
    return path.with_name(f"{path.stem}_hamming{t['max_hamming']}_similarity{t['min_similarity']}{path.suffix}")


def audit_duplicates(index: pd.DataFrame, groups_csv, progress: bool = True, **thresholds) -> pd.DataFrame:
    """Pairs -> groups, computed once per run folder and thresholds (``duplicate_groups.csv`` for
    the defaults; see :func:`groups_file`) and reused."""

    def make() -> pd.DataFrame:
        pairs = find_duplicate_pairs(index, progress=progress, **thresholds)
        groups = group_duplicates(index, pairs)
        kinds = pd.concat(
            [
                pairs[["image_a", "kind"]].rename(columns={"image_a": "image_id"}),
                pairs[["image_b", "kind"]].rename(columns={"image_b": "image_id"}),
            ]
        )
        exact = set(kinds.loc[kinds["kind"] == "exact", "image_id"])
        groups["has_exact_copy"] = groups["image_id"].isin(exact)
        return groups

    groups = cached_csv(groups_file(groups_csv, **thresholds), make)
    groups["cross_label"] = groups["cross_label"].astype(str).str.lower().eq("true")
    groups["has_exact_copy"] = groups["has_exact_copy"].astype(str).str.lower().eq("true")
    return groups
