"""Facts of the real BUSI (skipped, with the reason, when BUSI_ROOT is not set)."""

from __future__ import annotations

import numpy as np

from busi_utils import data
from busi_utils.data import splits


def test_counts(real_index):
    assert len(real_index) == 780
    assert real_index["label"].value_counts().to_dict() == {"benign": 437, "malignant": 210, "normal": 133}
    assert real_index["n_masks"].sum() == 798


def test_mask_modes_and_sizes(real_index):
    modes = real_index["mask_modes"].str.split(";").explode().value_counts().to_dict()
    assert modes == {"1": 663, "RGB": 133, "RGBA": 2}
    assert real_index["width"].min() == 190 and real_index["width"].max() == 1048


def test_extra_masks_are_merged(real_index):
    multi = real_index[real_index["n_masks"] > 1]
    assert len(multi) == 17
    assert set(multi.loc[multi["n_masks"] == 3, "image_id"]) == {"benign (195)"}
    for row in multi.itertuples():
        img = data.load_image(row.image_path)
        parts = [data.load_mask([p], img.shape) for p in row.mask_paths.split(";")]
        merged = data.load_mask(row.mask_paths, img.shape)
        assert (merged == np.logical_or.reduce(parts)).all()
        assert merged.sum() > max(p.sum() for p in parts) or any((p == merged).all() for p in parts)


def test_every_normal_mask_is_empty_and_every_lesion_mask_is_not(real_index):
    assert (real_index.loc[real_index["label"] == "normal", "mask_fraction"] == 0).all()
    assert (real_index.loc[real_index["label"] != "normal", "mask_fraction"] > 0).all()


def test_byte_identical_benign_malignant_pair_is_one_cross_label_group(real_groups):
    g = real_groups.set_index("image_id")
    assert g.loc["benign (433)", "group"] == g.loc["malignant (145)", "group"]
    assert g.loc["benign (433)", "cross_label"]


def test_no_duplicate_group_in_two_splits_or_folds(real_groups):
    for seed in (0, 42):
        m = splits.make_split(real_groups, n_folds=5, seed=seed)
        splits.check_no_group_crosses(m)
        assert set(m.loc[m["cross_label"], "split"]) == {"excluded"}
        test = m[m["split"] == "test"]
        assert 0.17 < len(test) / (m["split"] != "excluded").sum() < 0.23


def test_duplicate_groups_of_the_real_busi_are_pinned(real_groups):
    """The audit on the real BUSI, pinned beyond the one byte-identical pair: how many groups of
    copies, how many images they hold, how many cross two labels, and a few known near-duplicate
    pairs (a change to the thresholds or the fingerprint shows up here first)."""
    multi = real_groups[real_groups["group_size"] > 1]
    assert multi["group"].nunique() == 149 and len(multi) == 337
    assert multi.loc[multi["cross_label"], "group"].nunique() == 8
    g = real_groups.set_index("image_id")["group"]
    for a, b in [("benign (1)", "benign (318)"), ("benign (105)", "benign (156)"), ("benign (125)", "benign (126)")]:
        assert g[a] == g[b], (a, b)
    assert g["benign (2)"] != g["benign (3)"]
