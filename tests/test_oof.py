"""Leakage-safe masks: proven from the manifest of a real quick-profile run."""

from __future__ import annotations

import shutil

import pytest

from busi_utils import data
from busi_utils.core import config, files, runfolder
from busi_utils.core.errors import LeakageError
from busi_utils.data import preprocess
from busi_utils.stage1 import oof
from busi_utils.stage1 import segmentation as seg


def test_every_used_image_has_exactly_one_leak_free_mask(quick_paths):
    split = quick_paths.read_split()
    masks = oof.read_mask_manifest(quick_paths)
    used = split[split["split"].isin(["train", "test"])]
    assert sorted(masks["image_id"]) == sorted(used["image_id"])
    assert oof.check_leak_free(masks, split, quick_paths) == len(used)
    by = masks.merge(split[["image_id", "fold"]], on="image_id", suffixes=("", "_split"))
    train = by[by["split"] == "train"]
    assert (train["model"] == "unet_fold" + train["fold_split"].astype(str) + ".pt").all()
    folds = seg.fold_numbers(split)
    ensemble = oof.SEP.join(f"unet_fold{k}.pt" for k in folds)
    assert set(by.loc[by["split"] == "test", "model"]) == {
        ensemble
    }  # every fold model, none of which saw the test split
    assert (
        set(masks.loc[masks["label"] == "normal", "split"]) <= {"train", "test"} and (masks["label"] == "normal").any()
    )


def test_a_fold_model_that_saw_its_own_fold_is_caught(quick_paths):
    split = quick_paths.read_split()
    masks = oof.read_mask_manifest(quick_paths)
    _, fold0 = seg.load_segmenter(quick_paths.masks / "unet_fold0.pt")
    leaky = masks.copy()
    sel = (leaky["split"] == "train") & (leaky["fold"] == 1)  # fold 0's model trained on fold 1
    leaky.loc[sel, ["model", "model_train_hash"]] = ["unet_fold0.pt", fold0["train_ids_hash"]]
    with pytest.raises(LeakageError, match="unet_fold0.pt"):
        oof.check_leak_free(leaky, split, quick_paths)


def test_a_replaced_model_file_is_caught(quick_paths):
    split = quick_paths.read_split()
    masks = oof.read_mask_manifest(quick_paths).copy()
    masks.loc[masks["model"] == "unet_fold1.pt", "model_train_hash"] = "0" * 16
    with pytest.raises(LeakageError, match="replaced model"):
        oof.check_leak_free(masks, split, quick_paths)


def test_an_ensemble_member_that_saw_the_image_is_caught(quick_paths):
    """The test masks' check covers every member: an ensemble mask of a training-pool image
    (which all fold models but one trained on) is refused, naming a member that saw it."""
    split = quick_paths.read_split()
    masks = oof.read_mask_manifest(quick_paths)
    test_row = masks[masks["split"] == "test"].iloc[0]
    leaky = masks.copy()
    lesion = (leaky["split"] == "train") & (leaky["fold"] == 1) & (leaky["label"] != "normal")
    victim = leaky.index[lesion][0]  # a lesion image: the other fold models trained on it
    leaky.loc[victim, ["model", "model_train_hash"]] = [test_row["model"], test_row["model_train_hash"]]
    with pytest.raises(LeakageError, match=r"comes from unet_fold\d\.pt, which trained on"):
        oof.check_leak_free(leaky, split, quick_paths)
    assert oof.check_leak_free(masks, split, quick_paths) == len(masks)  # the untouched manifest passes


def test_a_replaced_ensemble_member_is_caught(quick_paths):
    split = quick_paths.read_split()
    masks = oof.read_mask_manifest(quick_paths).copy()
    test = masks["split"] == "test"
    hashes = masks.loc[test, "model_train_hash"].iloc[0].split(oof.SEP)
    masks.loc[test, "model_train_hash"] = oof.SEP.join(hashes[:-1] + ["0" * 16])
    with pytest.raises(LeakageError, match="replaced model"):
        oof.check_leak_free(masks, split, quick_paths)


def test_every_unet_comes_from_one_recipe(quick_paths):
    """Notebook 02's U-Net is notebook 03's fold-0 model: the profile's recipe for every fold
    (the same learning rate, epochs, augmentation and epoch rule), each fold its own seed and
    its own training list. (That notebook 03 loads fold 0 rather than training it again is
    proven by the resume test below.)"""
    split = quick_paths.read_split()
    recipe = config.load_profile("quick")["seg"]
    folds = seg.fold_numbers(split)
    for k in folds:
        _, info = seg.load_segmenter(quick_paths.fold_unet(k))
        train_ids, _ = seg.fold_ids(split, k, normals=seg.trains_on_normals(recipe))
        assert info["recipe"] == recipe and info["seed"] == seg.fold_seed(42, k)
        assert info["train_ids_hash"] == seg.ids_hash(train_ids)
    assert files.read_json(quick_paths.stage1_summary)["recipe"] == recipe
    summary = files.read_json(quick_paths.mask_summary)["folds"]
    assert [r["fold"] for r in summary] == folds and all("trained_now" not in r for r in summary)


def test_leak_through_a_duplicate_is_caught(quick_paths):
    """An image whose *duplicate* (not itself) was in the predictor's training list."""
    split = quick_paths.read_split()
    masks = oof.read_mask_manifest(quick_paths)
    _, fold0 = seg.load_segmenter(quick_paths.masks / "unet_fold0.pt")
    seen = set(fold0["train_ids"])
    fold0_rows = masks[masks["model"] == "unet_fold0.pt"]
    victim = fold0_rows["image_id"].iloc[0]
    twin = next(i for i in fold0["train_ids"])
    fake = split.copy()
    fake.loc[fake["image_id"].isin([victim, twin]), "group"] = "dup:test"
    assert victim not in seen
    with pytest.raises(LeakageError, match="trained on"):
        oof.check_leak_free(fold0_rows, fake, quick_paths)


def test_interrupted_run_resumes_and_trains_only_missing_folds(quick_paths, tmp_path, monkeypatch):
    paths = runfolder.RunPaths.for_profile("quick", tmp_path / "run")
    for name in ("index.csv", "split_manifest.csv", "source.json"):
        shutil.copy(quick_paths.data / name, paths.data / name)
    split = paths.read_split()
    recipe = config.load_profile("quick")["seg"]
    store = preprocess.ArrayStore(
        preprocess.resized_arrays(data.read_index(paths.index_csv), recipe["size"], progress=False)
    )
    calls = []
    real_train = seg.train_segmenter
    monkeypatch.setattr(seg, "train_segmenter", lambda *a, **k: calls.append(1) or real_train(*a, **k))

    class Killed(Exception):
        pass

    def kill_after_first(k):
        raise Killed

    first = seg.train_fold(paths, store, split, recipe, 42, 0, show_progress=False)  # notebook 02's call
    assert first.trained and len(calls) == 1
    with pytest.raises(Killed):
        oof.run_oof(paths, store, split, recipe, 42, progress=False, on_fold_done=kill_after_first)
    assert len(calls) == 1  # fold 0 came from notebook 02: loaded, not trained again
    masks, records = oof.run_oof(paths, store, split, recipe, 42, progress=False)
    n_folds = split.loc[split["split"] == "train", "fold"].nunique()
    assert len(calls) == n_folds  # every U-Net was trained exactly once
    assert [r["trained_now"] for r in records] == [False] + [True] * (n_folds - 1)
    again, records_again = oof.run_oof(paths, store, split, recipe, 42, progress=False)
    assert len(calls) == n_folds and not any(r["trained_now"] for r in records_again)
    strip = [{k: v for k, v in r.items() if k != "trained_now"} for r in records]
    assert strip == [{k: v for k, v in r.items() if k != "trained_now"} for r in records_again]  # same summary
    assert not list(paths.masks.rglob(".*tmp*"))  # no half-written file left
    oof.check_leak_free(masks, split, paths)
    # a changed recipe makes every stored fold mask stale: all folds are trained and predicted again
    changed = dict(recipe, epochs=recipe["epochs"] + 1)
    assert changed != recipe
    masks2, records2 = oof.run_oof(paths, store, split, changed, 42, progress=False)
    assert len(calls) == 2 * n_folds and all(r["trained_now"] for r in records2)
    folds = masks2[masks2["split"] == "train"]
    assert set(folds["model_fingerprint"]).isdisjoint(masks.loc[masks["split"] == "train", "model_fingerprint"])
    oof.check_leak_free(masks2, split, paths)


def test_mask_quality_compares_the_same_images_seen_and_unseen(quick_paths):
    split = quick_paths.read_split()
    recipe = config.load_profile("quick")["seg"]
    store = preprocess.ArrayStore(
        preprocess.resized_arrays(data.read_index(quick_paths.index_csv), recipe["size"], progress=False)
    )
    table = oof.mask_quality(quick_paths, split, store, oof.read_mask_manifest(quick_paths))
    seen = table[table["kind"] == oof.IN_SAMPLE]
    unseen = table[table["kind"] == oof.OUT_OF_FOLD]
    assert list(seen["image_id"]) == list(unseen["image_id"]) and len(seen)
    _, fold0 = seg.load_segmenter(quick_paths.fold_unet(0))
    assert set(seen["image_id"]) <= set(fold0["train_ids"])  # in-sample means: the model trained on them
    test = table[table["kind"] == oof.TEST]
    assert set(test["image_id"]) == set(split.query("split == 'test' and label != 'normal'")["image_id"])
    assert table["dice"].between(0, 1).all()
