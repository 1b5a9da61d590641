"""Stage 2 helpers built on the stage-1 probability map: *where* to look and *what shape* it is.

Two uses of the predicted lesion map, both without a network:

* :func:`lesion_crop`: a square, lesion-centred view of the scan, so the classifier sees the
  lesion and its margin at a useful resolution instead of a small blob in a large frame;
* :func:`shape_features`: BI-RADS-like descriptors of the predicted outline (orientation,
  solidity, circularity, ...), a small, readable input that :func:`describe` turns into evidence.

The kept lesion is always the same (:func:`lesion_box`'s rule), so the box, the crop and the
features describe one region. NumPy, SciPy and Pillow only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from busi_utils.core.images import resize_prob

# Neutral values when nothing is above threshold, so a classifier never sees NaN: area-based 0,
# shape ratios those of a plain round blob, depth mid-image (max_prob is always the map's maximum).
EMPTY = {"log_area": 0.0, "height_width": 1.0, "solidity": 1.0, "circularity": 1.0, "extent": 1.0}
EMPTY |= {"eccentricity": 0.0, "n_components": 0.0, "perimeter_ratio": 0.0, "depth": 0.5}
EMPTY |= {"max_prob": 0.0, "painted_fraction": 0.0, "largest_fraction": 0.0}
FEATURES = tuple(EMPTY)  # the descriptors' order: the columns of shape_matrix

# Reading aids for learners, NOT diagnostic cut-offs: they only choose the words "yes"/"no".
LESION_FOUND = 0.5  # max_prob at or above: the segmenter thinks something is there
TALLER_THAN_WIDE = 1.0  # height_width above: not parallel to the skin
IRREGULAR_SOLIDITY = 0.85  # solidity below: angular or spiculated outline
ROUND_OVAL_CIRCULARITY = 0.6  # circularity at or above: round or oval outline

_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: diagonal neighbours are one lesion


def _kept_component(prob: np.ndarray, threshold: float) -> tuple[np.ndarray | None, int]:
    """(mask of the kept component or None, number of components). Keeps the component with
    the largest probability *mass*, so a big faint false positive loses to a compact confident
    lesion; ties go to the first in raster order."""
    labels, n = ndimage.label(prob >= threshold, structure=_EIGHT)
    if n == 0:
        return None, 0
    mass = ndimage.sum(prob, labels, index=np.arange(1, n + 1))
    return labels == int(np.argmax(mass)) + 1, int(n)


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def lesion_box(prob: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int] | None:
    """Bounding box ``(y0, y1, x0, x1)`` (y1, x1 exclusive) of the predicted lesion.

    Rule: pixels with ``prob >= threshold``; 8-connected components (``scipy.ndimage.label``);
    with several, the one with the largest probability mass (sum of ``prob`` inside it) is kept;
    with none, ``None``.
    """
    mask, _ = _kept_component(np.asarray(prob, dtype=np.float32), threshold)
    return None if mask is None else _box(mask)


def crop_window(
    box: tuple[int, int, int, int], size: int, scale: float = 2.2, min_side: float = 0.25
) -> tuple[int, int, int, int]:
    """Square window ``(cy0, cy1, cx0, cx1)`` centred on ``box`` in a ``size`` x ``size`` image.

    Side ``scale * max(box height, box width)`` (room for the margin and surrounding tissue, where
    the malignancy signs are), at least ``min_side * size`` (a tiny blob still gets context), at
    most ``size``. The window may extend beyond the image; :func:`lesion_crop` pads with zeros.
    """
    y0, y1, x0, x1 = box
    side = scale * max(y1 - y0, x1 - x0)
    side = max(1, int(round(min(max(side, min_side * size), size))))
    cy0 = int(np.floor((y0 + y1) / 2 - side / 2 + 0.5))
    cx0 = int(np.floor((x0 + x1) / 2 - side / 2 + 0.5))
    return cy0, cy0 + side, cx0, cx0 + side


def _padded_window(img: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """The window's pixels, zeros where it leaves the image (black, like outside the sector)."""
    cy0, cy1, cx0, cx1 = window
    out = np.zeros((cy1 - cy0, cx1 - cx0), dtype=np.float32)
    h, w = img.shape
    sy0, sy1, sx0, sx1 = max(cy0, 0), min(cy1, h), max(cx0, 0), min(cx1, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - cy0 : sy1 - cy0, sx0 - cx0 : sx1 - cx0] = img[sy0:sy1, sx0:sx1]
    return out


def lesion_crop(
    scan: np.ndarray,
    prob: np.ndarray,
    out_size: int = 96,
    scale: float = 2.2,
    threshold: float = 0.5,
    min_side: float = 0.25,
) -> np.ndarray:
    """Square lesion-centred view of ``scan`` (2-D, square, values in [0, 1]): float32
    ``(out_size, out_size)`` in [0, 1].

    ``prob`` may have any square size: it is resized (bilinear) to the scan's size first. The
    window is :func:`crop_window` of :func:`lesion_box`, zero-padded outside the image, then
    resized (bilinear). No lesion found: the classifier sees the whole scan (resized).
    """
    scan = np.asarray(scan, dtype=np.float32)
    if scan.ndim != 2 or scan.shape[0] != scan.shape[1]:
        raise ValueError(f"scan must be a square 2-D array, got shape {scan.shape}")
    size = scan.shape[0]
    box = lesion_box(resize_prob(np.asarray(prob), size), threshold)
    view = scan if box is None else _padded_window(scan, crop_window(box, size, scale, min_side))
    return np.clip(resize_prob(view, out_size), 0.0, 1.0)


def _perimeter(mask: np.ndarray) -> int:
    """Pixel edges between a lesion pixel and a non-lesion pixel or the image border."""
    m = np.pad(mask, 1).astype(np.int8)
    return int(np.abs(np.diff(m, axis=0)).sum() + np.abs(np.diff(m, axis=1)).sum())


def _solidity(mask: np.ndarray, area: int) -> float:
    """Area / convex-hull area, the hull taken over pixel *corners* (so a filled square is 1)."""
    r, c = np.nonzero(mask)
    corners = np.unique(np.concatenate([np.stack([r + dr, c + dc], 1) for dr in (0, 1) for dc in (0, 1)]), axis=0)
    if len(corners) < 3:
        return 1.0
    try:
        hull_area = ConvexHull(corners).volume  # in 2-D, "volume" is the area
    except QhullError:
        return 1.0
    return float(min(1.0, area / hull_area)) if hull_area > 0 else 1.0


def _eccentricity(mask: np.ndarray) -> float:
    """sqrt(1 - lmin/lmax) of the pixel-coordinate covariance: 0 round, towards 1 elongated."""
    coords = np.stack(np.nonzero(mask), 0).astype(np.float64)
    if coords.shape[1] < 2:
        return 0.0
    lmin, lmax = np.linalg.eigvalsh(np.cov(coords))
    return float(np.sqrt(max(0.0, 1.0 - lmin / lmax))) if lmax > 0 else 0.0


def _geometry(mask: np.ndarray, aspect: float) -> dict[str, float]:
    """Shape descriptors of one component (``mask`` non-empty)."""
    h_img, w_img = mask.shape
    area = int(mask.sum())
    y0, y1, x0, x1 = _box(mask)
    perim = _perimeter(mask)
    # The edge count is a staircase length: on average over orientations it exceeds a smooth
    # outline's length by 4/pi (Cauchy-Crofton), so it is scaled by pi/4 and a disc reads ~1.
    circ = 4 * np.pi * area / (np.pi / 4 * perim) ** 2
    return {
        "log_area": float(np.log1p(area / mask.size * 1e4)),
        # box height / width in the original image's units: the square map stretched it by aspect
        "height_width": float((y1 - y0) / h_img / ((x1 - x0) / w_img) * aspect),
        "solidity": _solidity(mask, area),
        "circularity": float(np.clip(circ, 0.0, 1.0)),
        "extent": float(area / ((y1 - y0) * (x1 - x0))),
        "eccentricity": _eccentricity(mask),
        "perimeter_ratio": float(perim / np.sqrt(area)),
        "depth": float((np.nonzero(mask)[0].mean() + 0.5) / h_img),  # pixel centres: 0 skin, 1 bottom
    }


def shape_features(prob: np.ndarray, aspect: float = 1.0, threshold: float = 0.5) -> dict[str, float]:
    """The :data:`FEATURES` of the predicted lesion (kept as in :func:`lesion_box`), in order.

    ``aspect`` is the original image's height / width (the map is the image squashed to a
    square); only ``height_width`` uses it. ``log_area`` = log(1 + 1e4 * area fraction);
    ``circularity`` = 4 pi area / (pi/4 * edge perimeter)^2 clipped to [0, 1]; ``perimeter_ratio``
    = edge perimeter / sqrt(area); ``depth`` = centroid row / height. Nothing above threshold:
    :data:`EMPTY` values (never NaN) with the map's ``max_prob``. All values Python floats.
    """
    prob = np.asarray(prob, dtype=np.float32)
    mask, n = _kept_component(prob, threshold)
    painted = int((prob >= threshold).sum())
    out = dict(EMPTY) if mask is None else _geometry(mask, aspect)
    out["n_components"] = float(n)
    out["max_prob"] = float(prob.max()) if prob.size else 0.0
    out["painted_fraction"] = float(painted / prob.size) if prob.size else 0.0
    out["largest_fraction"] = float(mask.sum() / painted) if mask is not None else 0.0
    return {name: float(out[name]) for name in FEATURES}


def shape_matrix(probs: Sequence[np.ndarray], aspects: Sequence[float] | None = None) -> np.ndarray:
    """``(N, 12)`` float32 of :func:`shape_features`, columns in :data:`FEATURES` order."""
    aspects = [1.0] * len(probs) if aspects is None else list(aspects)
    if len(aspects) != len(probs):
        raise ValueError(f"{len(probs)} maps but {len(aspects)} aspects")
    rows = [list(shape_features(p, a).values()) for p, a in zip(probs, aspects)]  # values in FEATURES order
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(FEATURES))


# What each reading means, for the learner (shown beside the value).
MEANINGS = {
    "lesion found": "the segmenter's highest pixel probability: how sure it is that a lesion is in the image",
    "taller than wide": "BI-RADS orientation: a lesion taller than wide (not parallel to the skin) is a sign of "
    "malignancy",
    "irregular outline": "BI-RADS margin: angular or spiculated margins leave notches, so the outline fills less "
    "of its convex hull (low solidity); irregular margins are a sign of malignancy",
    "round or oval": "BI-RADS shape: round or oval lesions with smooth outlines are more often benign; low "
    "circularity means an elongated or irregular outline",
    "several lesions painted": "the segmenter painted more than one region (other lesions or false positives); "
    "the descriptors describe the region with the largest probability mass",
    "depth": "where the lesion's centre lies between the skin (top) and the bottom of the image; very deep "
    "regions may be chest wall or acoustic shadow rather than a lesion",
}


def _entry(name: str, value: float, yes: bool, text: str = "", fmt: str = ".2f") -> dict:
    text = text or f"{name}: {'yes' if yes else 'no'} ({value:{fmt}})"
    return {"name": name, "value": round(float(value), 2), "text": text, "meaning": MEANINGS[name]}


def describe(features: dict) -> list[dict]:
    """Evidence for a learner or the web page: one dict (``name``, ``value``, ``text``,
    ``meaning``) per descriptor with a clinical reading. No lesion found (``max_prob`` below
    :data:`LESION_FOUND` or nothing above threshold): only the "lesion found: no" entry."""
    f = features
    found = f["max_prob"] >= LESION_FOUND and f["n_components"] > 0
    out = [_entry("lesion found", f["max_prob"], found)]
    if not found:
        return out
    hw, sol, circ, n, depth = (f[k] for k in ("height_width", "solidity", "circularity", "n_components", "depth"))
    return out + [
        _entry("taller than wide", hw, hw > TALLER_THAN_WIDE),
        _entry("irregular outline", sol, sol < IRREGULAR_SOLIDITY),
        _entry("round or oval", circ, circ >= ROUND_OVAL_CIRCULARITY),
        _entry("several lesions painted", n, n > 1, fmt=".0f"),
        _entry("depth", depth, False, text=f"depth: {depth:.2f} of the image height (0 = skin)"),
    ]
