"""An external set's patients split once into development and evaluation: no patient on both
sides, the split kept as written, and nothing fitted or chosen reads an evaluation patient."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from busi_utils.core.errors import LeakageError
from busi_utils.data import splits
from busi_utils.stage1 import segmentation as seg


def _index(n_malignant: int = 12, n_benign: int = 18, n_normal: int = 6, seed: int = 0) -> pd.DataFrame:
    """A BUS-UCLM-like index: patients of three kinds, each with several scans (normals too)."""
    rng = np.random.default_rng(seed)
    rows = []
    for kind, n in (("malignant", n_malignant), ("benign", n_benign), ("normal", n_normal)):
        for p in range(n):
            patient = f"{kind[:3].upper()}{p:02d}"
            labels = ["normal"] * int(rng.integers(1, 6)) + (
                [kind] * int(rng.integers(1, 4)) if kind != "normal" else []
            )
            rows += [
                {"image_id": f"{patient}_{k:03d}", "patient": patient, "label": lab} for k, lab in enumerate(labels)
            ]
    return pd.DataFrame(rows)


def test_no_patient_is_on_both_sides_and_each_kind_is_on_both():
    index = _index()
    split = splits.make_patient_split(index)
    assert split["patient"].is_unique and set(split["patient"]) == set(index["patient"])
    dev, ev = (splits.patients_with_role(split, r) for r in (splits.DEVELOPMENT, splits.EVALUATION))
    assert dev and ev and not dev & ev
    assert set(split.loc[split["role"] == splits.DEVELOPMENT, "stratum"]) == set(splits.PATIENT_STRATA)
    assert set(split.loc[split["role"] == splits.EVALUATION, "stratum"]) == set(splits.PATIENT_STRATA)
    assert len(dev) == sum(round(n / 3) for n in (12, 18, 6))  # about one third, stratum by stratum
    rows = pd.concat([splits.development_rows(index, split), splits.evaluation_rows(index, split)])
    assert sorted(rows["image_id"]) == sorted(index["image_id"])  # every scan on exactly one side


def test_the_split_is_seeded_and_grouped():
    index = _index()
    assert splits.make_patient_split(index, seed=3).equals(splits.make_patient_split(index, seed=3))
    assert not splits.make_patient_split(index, seed=3).equals(splits.make_patient_split(index, seed=4))
    role = splits.make_patient_split(index).set_index("patient")["role"]
    assert index.groupby("patient")["patient"].first().map(role).notna().all()
    assert splits.patient_strata(index)["MAL00"] == "malignant"  # a patient with normal scans too is malignant


def test_the_written_split_is_reused_and_an_edit_is_caught(tmp_path):
    index = _index()
    path = tmp_path / "external" / "set_patient_split.csv"
    first = splits.load_or_make_patient_split(path, index)
    assert splits.load_or_make_patient_split(path, index).equals(first)
    edited = first.copy()
    k = edited.index[edited["role"] == splits.EVALUATION][0]
    edited.loc[k, "role"] = splits.DEVELOPMENT  # someone moves an evaluation patient to development
    edited.to_csv(path, index=False)
    with pytest.raises(LeakageError, match="edited"):
        splits.load_or_make_patient_split(path, index)
    first.to_csv(path, index=False)
    with pytest.raises(ValueError, match="other patients"):
        splits.load_or_make_patient_split(path, _index(n_malignant=13))
    with pytest.raises(ValueError, match="made with"):
        splits.load_or_make_patient_split(path, index, seed=1)


def test_a_planted_evaluation_patient_is_caught():
    """The negative control: the development rows pass; the same rows with one evaluation
    patient's scans planted among them are refused, naming the patient."""
    index = _index()
    split = splits.make_patient_split(index)
    dev = splits.development_rows(index, split)
    splits.check_development_only(dev["patient"], split)  # the control passes
    planted = splits.evaluation_rows(index, split)["patient"].iloc[0]
    with pytest.raises(LeakageError, match=f"1 evaluation patient.*{planted}"):
        splits.check_development_only([*dev["patient"], planted], split, "the presence cutoff")
    with pytest.raises(LeakageError, match="does not list"):
        splits.check_development_only([*dev["patient"], "NOBODY"], split)


def test_the_segmentation_benchmark_loads_development_patients_only(tmp_path, monkeypatch):
    """``scripts/benchmark_segmentation.py`` scores its candidates on the development patients:
    the scans it loads are exactly theirs."""
    import importlib.util

    from busi_utils.core.runfolder import RunPaths
    from busi_utils.data import external, synthetic

    root = synthetic.make_synthetic_external(tmp_path / "set", layout="bus_uclm")
    monkeypatch.setenv("BUS_UCLM_ROOT", str(root))
    monkeypatch.setenv("BUSI_CACHE", str(tmp_path / "cache"))
    spec = importlib.util.spec_from_file_location("bench", "scripts/benchmark_segmentation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    paths = RunPaths(tmp_path / "run")
    arrays = bench.development_arrays(paths, 32)
    index = external.build_external_index(root, progress=False)
    split = pd.read_csv(paths.external_split("bus_uclm"), dtype={"patient": str})
    dev = splits.development_rows(index, split)
    assert len(arrays["images"]) == len(dev) < len(index)
    assert arrays["lesion"].sum() == (dev["label"] != "normal").sum()


def test_stage1_may_train_on_normals_but_never_on_a_test_image(synthetic_split_for_normals):
    split = synthetic_split_for_normals
    ids, watched = seg.fold_ids(split, 0, normals=True)
    m = split.set_index("image_id").loc[ids]
    assert (m["split"] == "train").all() and (m["fold"] != 0).all() and (m["label"] == "normal").any()
    assert set(ids) > set(seg.fold_ids(split, 0)[0])  # the lesion images, and the normals besides
    assert not (split.set_index("image_id").loc[watched, "label"] == "normal").any()
    seg.check_training_items(split, ids, normals=True)
    with pytest.raises(LeakageError, match="must not be trained on"):
        seg.check_training_items(split, ids)  # the lesion-only recipe refuses the normals
    test_id = split.query("split == 'test'")["image_id"].iloc[0]
    with pytest.raises(LeakageError, match="must not be trained on"):
        seg.check_training_items(split, ids + [test_id], normals=True)


@pytest.fixture(scope="module")
def synthetic_split_for_normals(synthetic_index):
    from busi_utils.data import dedup

    groups = dedup.group_duplicates(synthetic_index, dedup.find_duplicate_pairs(synthetic_index, progress=False))
    return splits.make_split(groups, n_folds=3, seed=0)


def test_chapter_7_scores_the_evaluation_patients_only(complete_quick_paths):
    """The course's external figures are those of the evaluation patients of the split it wrote;
    the whole set is kept beside them, labelled."""
    from busi_utils.core.files import read_json

    metrics = read_json(complete_quick_paths.metrics_json)
    key, entry = next(iter(metrics["external"].items()))
    split = pd.read_csv(complete_quick_paths.external_split(key), dtype={"patient": str})
    evaluation = splits.patients_with_role(split, splits.EVALUATION)
    assert entry["patients"] == "evaluation" and entry["n_patients"] == len(evaluation)
    assert entry["patient_split"]["sha"] == splits.patient_split_hash(split)
    assert set(entry["patient_split"]["development_patients"]).isdisjoint(evaluation)
    assert entry["whole_set"]["n_patients"] == len(split) > entry["n_patients"]
    assert entry["whole_set"]["n_images"] > entry["n_images"]
