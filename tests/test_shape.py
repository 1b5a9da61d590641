"""Lesion box, lesion-centred crop and shape descriptors on drawn synthetic maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from busi_utils.core.images import resize_prob
from busi_utils.stage2 import shape

N = 96


def ellipse(cy: float, cx: float, ry: float, rx: float, size: int = N, value: float = 1.0) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return np.where(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1, value, 0.0).astype(np.float32)


def cross(size: int = N) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    bars = (abs(yy - 48) < 4) & (abs(xx - 48) < 25) | (abs(xx - 48) < 4) & (abs(yy - 48) < 25)
    return bars.astype(np.float32)


def entry(entries: list[dict], name: str) -> dict:
    return next(e for e in entries if e["name"] == name)


TALL = ellipse(48, 48, 30, 15)


def test_taller_than_wide_ellipse():
    f = shape.shape_features(TALL)
    assert f["height_width"] == pytest.approx(61 / 31)
    assert f["eccentricity"] == pytest.approx(math.sqrt(1 - 0.25), abs=0.02)
    assert entry(shape.describe(f), "taller than wide")["text"] == "taller than wide: yes (1.97)"


def test_aspect_corrects_the_squashed_map():
    # the original image was 400 high x 800 wide: each map row stands for half as much height
    hw = shape.shape_features(TALL)["height_width"]
    f = shape.shape_features(TALL, aspect=400 / 800)
    assert f["height_width"] == pytest.approx(hw * 0.5)
    assert entry(shape.describe(f), "taller than wide")["text"].startswith("taller than wide: no")
    assert shape.shape_features(TALL, aspect=2.0)["height_width"] == pytest.approx(hw * 2)


def test_disc_is_round_and_solid_cross_is_not():
    disc, star = shape.shape_features(ellipse(48, 48, 20, 20)), shape.shape_features(cross())
    assert disc["circularity"] > 0.9 and disc["solidity"] > 0.95 and disc["eccentricity"] < 0.05
    assert star["solidity"] < 0.5 and star["circularity"] < 0.5
    assert entry(shape.describe(disc), "irregular outline")["text"].startswith("irregular outline: no")
    assert entry(shape.describe(disc), "round or oval")["text"].startswith("round or oval: yes")
    assert entry(shape.describe(star), "irregular outline")["text"].startswith("irregular outline: yes")
    assert entry(shape.describe(star), "round or oval")["text"].startswith("round or oval: no")


def test_rectangle_features_by_hand():
    prob = np.zeros((N, N), np.float32)
    prob[10:20, 30:45] = 0.9
    f = shape.shape_features(prob)
    assert shape.lesion_box(prob) == (10, 20, 30, 45)
    assert f["log_area"] == pytest.approx(math.log1p(150 / N**2 * 1e4))
    assert f["height_width"] == pytest.approx(10 / 15)
    assert f["extent"] == pytest.approx(1.0) and f["solidity"] == pytest.approx(1.0)
    assert f["perimeter_ratio"] == pytest.approx(50 / math.sqrt(150))  # 2 * (10 + 15) edges
    assert f["circularity"] == 1.0  # 64 * 150 / (pi * 50**2) = 1.22, clipped
    assert f["eccentricity"] == pytest.approx(math.sqrt(1 - (99 / 12) / (224 / 12)))  # var of 0..9 / 0..14
    assert f["depth"] == pytest.approx(15 / N)
    assert f["max_prob"] == pytest.approx(0.9) and f["painted_fraction"] == pytest.approx(150 / N**2)
    assert f["n_components"] == 1.0 and f["largest_fraction"] == 1.0
    assert all(type(v) is float for v in f.values())


def test_perimeter_counts_the_image_border():
    prob = np.zeros((N, N), np.float32)
    prob[0:10, 0:15] = 1.0
    assert shape.shape_features(prob)["perimeter_ratio"] == pytest.approx(50 / math.sqrt(150))


def test_single_pixel_is_finite():
    prob = np.zeros((N, N), np.float32)
    prob[5, 7] = 1.0
    f = shape.shape_features(prob)
    assert f["eccentricity"] == 0.0 and f["solidity"] == 1.0 and f["extent"] == 1.0
    assert shape.lesion_box(prob) == (5, 6, 7, 8)


def test_threshold_and_eight_connectivity():
    prob = np.zeros((N, N), np.float32)
    prob[20:30, 20:30] = 0.4
    assert shape.lesion_box(prob) is None
    assert shape.lesion_box(prob, threshold=0.3) == (20, 30, 20, 30)
    diag = np.zeros((N, N), np.float32)
    diag[40, 40] = diag[41, 41] = 1.0  # touching by a corner only: one lesion
    assert shape.shape_features(diag)["n_components"] == 1.0
    assert shape.lesion_box(diag) == (40, 42, 40, 42)


def two_lesions() -> tuple[np.ndarray, np.ndarray]:
    """A big faint region (area 400, mass 220) and a compact confident one (area 256, mass 256)."""
    prob = np.zeros((N, N), np.float32)
    prob[60:80, 60:80] = 0.55
    prob[10:26, 10:26] = 1.0
    scan = np.full((N, N), 0.2, np.float32)
    scan[10:26, 10:26] = 1.0
    scan[60:80, 60:80] = 0.0
    return scan, prob


def test_largest_mass_wins_over_largest_area():
    scan, prob = two_lesions()
    assert shape.lesion_box(prob) == (10, 26, 10, 26)
    crop = shape.lesion_crop(scan, prob)
    assert crop[N // 2, N // 2] > 0.95  # centred on the confident lesion (the faint one is black)
    f = shape.shape_features(prob)
    assert f["n_components"] == 2.0
    assert f["largest_fraction"] == pytest.approx(256 / 656)
    assert f["log_area"] == pytest.approx(math.log1p(256 / N**2 * 1e4))
    assert f["depth"] == pytest.approx(18 / N)
    assert entry(shape.describe(f), "several lesions painted")["text"] == "several lesions painted: yes (2)"


def test_empty_map():
    rng = np.random.default_rng(0)
    scan = rng.random((N, N)).astype(np.float32)
    prob = np.full((N, N), 0.3, np.float32)
    assert shape.lesion_box(prob) is None
    crop = shape.lesion_crop(scan, prob, out_size=64)
    assert crop.shape == (64, 64) and crop.dtype == np.float32
    np.testing.assert_allclose(crop, resize_prob(scan, 64), atol=1e-6)
    f = shape.shape_features(prob)
    assert list(f) == list(shape.FEATURES) and all(math.isfinite(v) for v in f.values())
    assert f["n_components"] == 0.0 and f["max_prob"] == pytest.approx(0.3) and f["log_area"] == 0.0
    d = shape.describe(f)
    assert len(d) == 1 and d[0]["text"] == "lesion found: no (0.30)" and d[0]["value"] == 0.3


def test_corner_lesion_is_zero_padded():
    scan = np.ones((N, N), np.float32)  # any zero in the crop comes from the padding
    crop = shape.lesion_crop(scan, ellipse(4, 4, 3, 3), out_size=64)
    assert crop.shape == (64, 64) and crop.dtype == np.float32
    # window 24 px (min_side) from -7 to 17: the first 7/24 of rows and columns lie outside
    assert crop[0, 0] == 0.0 and crop[0, -1] == 0.0 and crop[-1, 0] == 0.0
    assert crop[:15].max() == 0.0 and crop[:, :15].max() == 0.0
    assert crop[-1, -1] == pytest.approx(1.0) and crop.min() >= 0.0 and crop.max() <= 1.0


def test_crop_window_side():
    box = (40, 50, 40, 50)  # 10 x 10, centre 45
    assert shape.crop_window(box, 100, scale=2.2, min_side=0.1) == (34, 56, 34, 56)  # 2.2 * 10
    assert shape.crop_window(box, 100, scale=2.2, min_side=0.25) == (33, 58, 33, 58)  # 0.25 * 100
    assert shape.crop_window(box, 100, scale=20.0, min_side=0.25) == (-5, 95, -5, 95)  # clamped to 100
    cy0, cy1, cx0, cx1 = shape.crop_window((10, 40, 0, 10), 100, scale=2.2, min_side=0.25)
    assert cy1 - cy0 == cx1 - cx0 == 66  # the longer side (30) sets the square
    assert (cy0 + cy1) / 2 == 25 and (cx0 + cx1) / 2 == 5


def test_prob_map_smaller_than_scan():
    scan = ellipse(60, 120, 16, 16, size=192)  # the lesion, bright, in scan coordinates
    prob = ellipse(30, 60, 8, 8, size=96)  # the same lesion on a half-size map
    crop = shape.lesion_crop(scan, prob)
    assert crop.shape == (96, 96) and crop[48, 48] == pytest.approx(1.0)
    np.testing.assert_array_equal(crop, shape.lesion_crop(scan, resize_prob(prob, 192)))


def test_crop_refuses_a_non_square_scan():
    with pytest.raises(ValueError, match="square"):
        shape.lesion_crop(np.zeros((10, 20)), np.zeros((10, 10)))


def test_shape_matrix_columns_follow_features():
    probs, aspects = [ellipse(48, 48, 20, 20), TALL, np.zeros((N, N), np.float32)], [1.0, 0.5, 2.0]
    m = shape.shape_matrix(probs, aspects)
    assert len(shape.FEATURES) == 12 and m.shape == (3, 12) and m.dtype == np.float32
    for row, p, a in zip(m, probs, aspects):
        f = shape.shape_features(p, a)
        assert list(f) == list(shape.FEATURES)
        np.testing.assert_allclose(row, [f[k] for k in shape.FEATURES], rtol=1e-6)
    assert m[1, shape.FEATURES.index("height_width")] == pytest.approx(61 / 31 * 0.5, rel=1e-6)
    assert shape.shape_matrix([]).shape == (0, 12)
    with pytest.raises(ValueError):
        shape.shape_matrix(probs, [1.0])


def test_describe_lists_the_readings():
    d = shape.describe(shape.shape_features(TALL))
    names = [e["name"] for e in d]
    assert names[0] == "lesion found" and d[0]["text"] == "lesion found: yes (1.00)"
    for name in ("taller than wide", "irregular outline", "round or oval", "several lesions painted", "depth"):
        assert name in names
    assert all(set(e) == {"name", "value", "text", "meaning"} and e["meaning"] for e in d)
    assert "BI-RADS orientation" in entry(d, "taller than wide")["meaning"]
    assert entry(d, "depth")["value"] == pytest.approx(0.51)
