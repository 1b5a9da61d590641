"""Duplicate audit and grouped splits: no scan may sit on two sides of a split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from busi_utils.core.errors import LeakageError
from busi_utils.data import dedup, splits


@pytest.fixture(scope="module")
def groups(synthetic_index):
    return dedup.group_duplicates(synthetic_index, dedup.find_duplicate_pairs(synthetic_index, progress=False))


def test_exact_and_near_duplicates_are_found_and_nothing_else(synthetic_index):
    pairs = dedup.find_duplicate_pairs(synthetic_index, progress=False)
    found = {(r.image_a, r.image_b, r.kind) for r in pairs.itertuples()}
    assert found == {("benign (2)", "malignant (16)", "exact"), ("benign (3)", "benign (24)", "near")}


def test_cross_label_group_is_flagged(groups):
    g = groups.set_index("image_id")
    assert g.loc["benign (2)", "group"] == g.loc["malignant (16)", "group"]
    assert g.loc["benign (2)", "cross_label"] and not g.loc["benign (3)", "cross_label"]
    assert g.loc["benign (5)", "group"] == "benign (5)" and g.loc["benign (5)", "group_size"] == 1


def test_pixel_similarity_tolerates_resize_and_crop_but_not_other_images(synthetic_index):
    from busi_utils.data import load_image

    a = load_image(synthetic_index.set_index("image_id").loc["benign (5)", "image_path"])
    h, w = a.shape
    crop = np.asarray(Image.fromarray(a).crop((6, 4, w - 5, h - 3)).resize((w // 2, h // 2)))
    other = load_image(synthetic_index.set_index("image_id").loc["benign (6)", "image_path"])
    ta, tc, to = (dedup.image_fingerprint(x)[1] for x in (a, crop, other))
    assert dedup.pixel_similarity(ta, ta) == pytest.approx(1.0, abs=1e-4)
    assert dedup.pixel_similarity(ta, tc) > 0.95
    assert dedup.pixel_similarity(ta, to) < 0.9


def test_split_keeps_groups_whole_and_excludes_cross_label(groups):
    m = splits.make_split(groups, n_folds=3, seed=0)
    splits.check_no_group_crosses(m)
    assert set(m.loc[m["cross_label"], "split"]) == {"excluded"}
    assert set(m.loc[m["image_id"].isin(["benign (3)", "benign (24)"]), "split"]).__len__() == 1
    train = m[m["split"] == "train"]
    assert set(train["fold"]) == {0, 1, 2} and (m.loc[m["split"] != "train", "fold"] == -1).all()
    assert 0.12 < (m["split"] == "test").mean() < 0.3
    for label in ("normal", "benign", "malignant"):  # stratified: every class in test and every fold
        assert (m[(m["split"] == "test")]["label"] == label).any()
        assert train[train["label"] == label]["fold"].nunique() == 3


def test_cross_label_groups_can_be_kept(groups):
    m = splits.make_split(groups, n_folds=3, seed=0, exclude_cross_label=False)
    assert "excluded" not in set(m["split"])
    splits.check_no_group_crosses(m)


def test_same_seed_same_split_other_seed_other_split(groups):
    a = splits.make_split(groups, n_folds=3, seed=7)
    b = splits.make_split(groups, n_folds=3, seed=7)
    c = splits.make_split(groups, n_folds=3, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a[["split", "fold"]].equals(c[["split", "fold"]])


def test_leaky_manifest_is_caught(groups):
    m = splits.make_split(groups, n_folds=3, seed=0)
    near = m.index[m["image_id"] == "benign (24)"][0]
    other = m.loc[m["image_id"] == "benign (3)", "split"].iloc[0]
    m.loc[near, "split"] = "test" if other == "train" else "train"
    with pytest.raises(LeakageError):
        splits.check_no_group_crosses(m)


def test_subsample_keeps_whole_groups_and_class_proportions(groups):
    m = splits.make_split(groups, n_folds=2, seed=0, max_images=26, exclude_cross_label=False)
    used = m[m["split"] != "unused"]
    assert 20 <= len(used) <= 32
    splits.check_no_group_crosses(m)
    assert used.groupby("group")["image_id"].size().eq(m[m["group"].isin(used["group"])].groupby("group").size()).all()


def test_manifest_is_reused_checked_and_never_silently_replaced(groups, tmp_path):
    path = tmp_path / "split_manifest.csv"
    a = splits.load_or_make_split(path, groups, n_folds=3, seed=0)
    b = splits.load_or_make_split(path, groups, n_folds=3, seed=0)
    pd.testing.assert_frame_equal(a.astype(str), b.astype(str))
    with pytest.raises(ValueError, match="another run folder"):
        splits.load_or_make_split(path, groups, n_folds=3, seed=1)
    path.write_text(path.read_text().replace(",train,", ",test,", 1))
    with pytest.raises(ValueError, match="edited"):
        splits.load_or_make_split(path, groups, n_folds=3, seed=0)


def _planted_duplicates(n_groups: int = 40, copies: int = 3) -> pd.DataFrame:
    """A groups table with many planted duplicate groups (each scan filed ``copies`` times)."""
    rows = [
        {"image_id": f"g{g}_c{c}", "label": ("benign", "malignant", "normal")[g % 3], "group": f"g{g}"}
        for g in range(n_groups)
        for c in range(copies)
    ]
    t = pd.DataFrame(rows)
    return t.assign(group_size=copies, cross_label=False)


def test_a_random_split_leaks_copies_and_the_grouped_split_does_not():
    """The leakage lesson of chapters 1 and 5 as a test: with planted duplicates, an ungrouped
    random split puts copies of test scans into training; the course's grouped split never does."""
    groups = _planted_duplicates()
    for seed in (0, 1, 2):
        tr, te = splits.random_split(groups["label"].tolist(), 0.2, seed)
        leaked = splits.copies_across(groups, groups["image_id"].iloc[tr], groups["image_id"].iloc[te])
        assert leaked > len(te) // 2  # most test scans have a copy in training
        grouped = splits.make_split(groups, test_frac=0.2, n_folds=3, seed=seed)
        train = grouped.loc[grouped["split"] == "train", "image_id"]
        test = grouped.loc[grouped["split"] == "test", "image_id"]
        assert len(test) and splits.copies_across(groups, train, test) == 0
        pool = grouped[grouped["split"] == "train"]
        for k in range(3):  # nor between the folds
            inside, outside = pool.loc[pool["fold"] == k, "image_id"], pool.loc[pool["fold"] != k, "image_id"]
            assert splits.copies_across(groups, outside, inside) == 0


def test_the_duplicate_cache_is_keyed_by_its_thresholds(synthetic_index, tmp_path):
    """The exercise "vary the threshold" must see its own threshold, and leave the run's groups alone."""
    run_file = tmp_path / "duplicate_groups.csv"
    default = dedup.audit_duplicates(synthetic_index, run_file, progress=False)
    strict = dedup.audit_duplicates(synthetic_index, run_file, progress=False, max_hamming=0, min_similarity=0.9999)
    assert run_file.exists() and dedup.groups_file(run_file, max_hamming=0, min_similarity=0.9999).exists()
    assert dedup.groups_file(run_file, **dedup.THRESHOLDS) == run_file
    # near copies are grouped by the defaults only: stricter thresholds leave fewer images in groups of 2+
    size = lambda g: int((g.groupby("group")["image_id"].transform("size") > 1).sum())  # noqa: E731
    assert size(strict) < size(default)
    again = dedup.audit_duplicates(synthetic_index, run_file, progress=False)  # the run's file, unchanged
    assert again["group"].astype(str).tolist() == default["group"].astype(str).tolist()
