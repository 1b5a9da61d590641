"""One exercise of each chapter's "Going further", done as the reader would on the quick run, and
shown to change the output (an exercise that silently does nothing teaches the wrong lesson).

Each test names the words its chapter's "Going further" uses for the exercise; the first test
checks they are there, so the exercise a reader sees is the one tested here.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from busi_utils import data
from busi_utils.core import config
from busi_utils.core.errors import LeakageError
from busi_utils.core.runfolder import RunPaths
from busi_utils.data import dedup

EXERCISES = {  # chapter -> words of its tested exercise, as its "Going further" writes them
    "01": "max_hamming=",
    "02": '"loss": "dice_focal"',
    "03": "oof.check_leak_free",
    "04": "crossfit.train_member(vd",
    "05": "uncertainty.fit_temperature(",
    "06": "threshold=",
    "07": "bootstrap_ci(",
    "08": "floor=0.05",
}


def going_further(chapter: str) -> str:
    (path,) = sorted((config.repo_root() / "notebooks").glob(f"{chapter}_*.ipynb"))
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return next("".join(c["source"]) for c in cells if "".join(c["source"]).startswith("## Going further"))


@pytest.mark.parametrize("chapter", sorted(EXERCISES))
def test_each_chapter_offers_the_exercise_tested_here(chapter):
    assert EXERCISES[chapter] in going_further(chapter), (chapter, EXERCISES[chapter])


def test_01_other_duplicate_thresholds_give_other_groups(quick_paths, tmp_path):
    index = data.read_index(quick_paths.index_csv)
    groups_csv = shutil.copy(quick_paths.groups_csv, tmp_path / "duplicate_groups.csv")  # the run's, cached
    default = dedup.audit_duplicates(index, groups_csv, progress=False)
    strict = dedup.audit_duplicates(index, groups_csv, progress=False, max_hamming=4, min_similarity=0.99)
    in_groups = {name: int((g["group_size"] > 1).sum()) for name, g in (("default", default), ("strict", strict))}
    assert in_groups["strict"] < in_groups["default"], in_groups  # stricter: fewer images in duplicate groups
    assert dedup.groups_file(groups_csv, max_hamming=4, min_similarity=0.99).exists()  # its own cache file
    assert dedup.audit_duplicates(index, groups_csv, progress=False).equals(default)  # the run's groups unchanged


def test_02_the_focal_loss_trains_another_unet(quick_paths):
    from busi_utils.data import preprocess
    from busi_utils.stage1 import segmentation as seg

    recipe = config.load_profile("quick")["seg"]
    split = quick_paths.read_split()
    index = data.read_index(quick_paths.index_csv)
    store = preprocess.ArrayStore(preprocess.resized_arrays(index, recipe["size"]))
    train_ids, valid_ids = seg.fold_ids(split, 0)
    _, history, _ = seg.train_segmenter(
        store, train_ids, valid_ids, {**recipe, "loss": "dice_focal"}, 42, show_progress=False
    )
    _, course = seg.load_segmenter(quick_paths.fold_unet(0))  # the chapter's fold-0 U-Net (Dice + BCE)
    default = pd.read_csv(RunPaths.history(quick_paths.fold_unet(0)))
    assert course["recipe"].get("loss", "dice_bce") == "dice_bce"
    assert not np.allclose(history["dice"].to_numpy(), default["dice"].to_numpy())  # the watched Dice moved


def test_03_a_mask_credited_to_a_unet_that_saw_the_image_is_refused(quick_paths):
    from busi_utils.stage1 import oof

    manifest, split = oof.read_mask_manifest(quick_paths), quick_paths.read_split()
    assert oof.check_leak_free(manifest, split, quick_paths) == len(manifest)
    pool = manifest[manifest["split"] == "train"]
    victim = pool.index[pool["label"] != "normal"][0]  # a lesion scan: the U-Nets train on lesions only
    other = pool[pool["model"] != pool.loc[victim, "model"]].iloc[0]  # another fold's U-Net: it trained on victim
    broken = manifest.copy()
    broken.loc[victim, ["model", "model_train_hash"]] = other[["model", "model_train_hash"]].to_numpy()
    with pytest.raises(LeakageError, match=re.escape(str(manifest.loc[victim, "image_id"]))):
        oof.check_leak_free(broken, split, quick_paths)


def test_04_a_member_for_the_remaining_fold_adds_out_of_fold_answers(quick_paths, tmp_path):
    from busi_utils.stage2 import classification as cls
    from busi_utils.stage2 import crossfit

    copy = RunPaths.for_profile("quick", shutil.copytree(quick_paths.root, tmp_path / "run"))
    cfg = config.load_profile("quick")
    index, split = data.read_index(copy.index_csv), copy.read_split()
    vd = cls.load_variant_data(copy, index, split, cfg["classify"]["size"], progress=False)
    view, members = "image+pred_mask", list(cfg["ensemble"]["members"])
    remaining = sorted(set(split.loc[split["split"] == "train", "fold"].astype(int)) - set(members))
    assert remaining, "the quick profile leaves no fold without a member"
    before = crossfit.oof_table(vd, [view], members)
    crossfit.train_member(vd, view, cfg["classify"], 42, remaining[0])
    after = crossfit.oof_table(vd, [view], [*members, remaining[0]])
    assert len(after) > len(before) and set(before["image_id"]) < set(after["image_id"])


def test_05_a_temperature_fitted_on_test_flatters_test(quick_paths):
    from busi_utils.evaluation import report, uncertainty
    from busi_utils.stage2 import classification as cls
    from busi_utils.stage2 import crossfit, fusion

    cfg = config.load_profile("quick")
    index, split = data.read_index(quick_paths.index_csv), quick_paths.read_split()
    summary = report.read_classifier_summary(quick_paths)
    vd = cls.load_variant_data(quick_paths, index, split, cfg["classify"]["size"], progress=False)
    tt = crossfit.test_table(vd, summary["views"], summary["members"])
    p = {v: crossfit.view_matrix(tt, v) for v in summary["views"]}
    raw = fusion.fuse(summary["fusion"], p[fusion.SCAN_VIEW], p[fusion.CROP_VIEW], tt["conf"])
    shipped = summary["finalised"]["temperature"]  # fitted out of fold in chapter 4
    on_test = uncertainty.fit_temperature(tt["label"], raw)
    assert not np.isclose(on_test, shipped)

    def nll(t: float) -> float:
        q = uncertainty.apply_temperature(raw, t)
        return float(-np.log(q[np.arange(len(q)), [config.CLASSES.index(c) for c in tt["label"]]] + 1e-12).mean())

    assert nll(on_test) <= nll(shipped) + 1e-9  # "improves" on the very images it was fitted on


def test_06_the_threshold_changes_the_lesion_area(quick_paths):
    from busi_utils.serve import infer

    index, split = data.read_index(quick_paths.index_csv), quick_paths.read_split()
    test_ids = split.loc[(split["split"] == "test") & (split["label"] != "normal"), "image_id"].head(5)
    scans = index.set_index("image_id").loc[test_ids, "image_path"]
    predictor = infer.Predictor(quick_paths.root)
    low = [predictor.predict(s, threshold=0.3).mask.mean() for s in scans]
    high = [predictor.predict(s, threshold=0.7).mask.mean() for s in scans]
    assert all(a >= b for a, b in zip(low, high)) and sum(low) > sum(high)


def test_07_images_instead_of_patients_give_another_interval(complete_quick_paths):
    from busi_utils.data import external
    from busi_utils.evaluation import evaluate, metrics

    cfg = config.load_profile("quick")
    root, _ = external.find_external(None)
    index = external.subset_patients(external.build_external_index(root), cfg["external"]["max_images"], 42)
    index = index[index["patient"].isin(index["patient"].drop_duplicates().head(6))]
    table, _ = evaluate.predict_external(evaluate.RunModels(complete_quick_paths.root), index, progress=False)
    rows, p = evaluate.variant_probs(table, "method")
    right = (np.array(config.CLASSES)[p.argmax(1)] == rows["label"].to_numpy()).astype(float)

    def accuracy(i):
        return right[i].mean()

    by_patient = metrics.bootstrap_ci(accuracy, len(right), 200, 42, groups=rows["patient"])
    by_image = metrics.bootstrap_ci(accuracy, len(right), 200, 42)
    assert not np.allclose(by_patient, by_image)


def test_08_a_floor_on_each_class_changes_what_em_estimates(complete_quick_paths):
    from busi_utils.adapt import prior
    from busi_utils.evaluation import adaptation, evaluate

    models = evaluate.RunModels(complete_quick_paths.root)
    (images,) = sorted(complete_quick_paths.external.glob("*_images.csv"))  # chapter 7's per-scan table
    answers = pd.read_csv(images)[[f"method:p_{c}" for c in config.CLASSES]].to_numpy()
    home = adaptation.training_mix(models)
    plain, _ = prior.em_prior(answers, home)
    floored, _ = prior.em_prior(answers, home, floor=0.05)
    assert floored.min() >= 0.05 - 1e-9 and np.isclose(floored.sum(), 1)
    assert not np.allclose(plain, floored) or plain.min() >= 0.05  # the floor bites unless EM never went below it
