"""Grouped, stratified splits: a hold-out test split and K folds on the rest.

Groups (an image and its duplicates) move together, so no scan is in two splits or two
folds. Cross-label groups (the same scan filed as benign *and* malignant) carry a label
that cannot be right for all members; by default they are excluded from training and
testing altogether.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from busi_utils.core.errors import LeakageError
from busi_utils.core.files import atomic_write_json, atomic_write_text, read_json


def subsample_groups(groups: pd.DataFrame, max_images: int, seed: int) -> pd.Series:
    """A boolean mask choosing about ``max_images`` images, whole groups at a time, with
    each class in its original proportion (the ``quick`` profile trains on a subset)."""
    rng = np.random.default_rng(seed)
    group_label = groups.groupby("group")["label"].agg(lambda s: s.astype(str).mode().iloc[0])
    sizes = groups.groupby("group").size()
    chosen: list[str] = []
    frac = max_images / len(groups)
    for _, gids in group_label.groupby(group_label):
        gids = np.array(sorted(gids.index), dtype=object)
        rng.shuffle(gids)
        quota, taken = round(frac * sizes[gids].sum()), 0
        for g in gids:
            if taken >= quota:
                break
            chosen.append(g)
            taken += sizes[g]
    keep = groups["group"].isin(chosen)
    return keep


def make_split(
    groups: pd.DataFrame,
    test_frac: float = 0.2,
    n_folds: int = 5,
    seed: int = 42,
    exclude_cross_label: bool = True,
    max_images: int | None = None,
) -> pd.DataFrame:
    """The split manifest: one row per image with ``split`` in train / test / excluded /
    unused and ``fold`` (0..K-1 for train, -1 otherwise).

    ``groups`` is :func:`busi_utils.data.dedup.group_duplicates`'s output. The test split is
    one fold of a ``round(1/test_frac)``-fold StratifiedGroupKFold; the training pool is
    split again into ``n_folds`` grouped, stratified folds.
    """
    m = groups[["image_id", "label", "group", "group_size", "cross_label"]].copy().reset_index(drop=True)
    m["split"], m["fold"] = "train", -1
    if exclude_cross_label:
        m.loc[m["cross_label"], "split"] = "excluded"
    if max_images:
        m.loc[~subsample_groups(m, max_images, seed) & (m["split"] == "train"), "split"] = "unused"
    pool = m.index[m["split"] == "train"]
    outer = StratifiedGroupKFold(n_splits=max(2, round(1 / test_frac)), shuffle=True, random_state=seed)
    _, test_idx = next(outer.split(pool, m.loc[pool, "label"].astype(str), m.loc[pool, "group"]))
    m.loc[pool[test_idx], "split"] = "test"
    train = m.index[m["split"] == "train"]
    inner = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val_idx) in enumerate(inner.split(train, m.loc[train, "label"].astype(str), m.loc[train, "group"])):
        m.loc[train[val_idx], "fold"] = k
    check_no_group_crosses(m)
    return m


def random_split(labels: Sequence[str], test_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` positions of an ungrouped, stratified random split: what most BUSI
    papers do, and the leak chapter 5 measures (duplicates may land on both sides)."""
    return train_test_split(np.arange(len(labels)), test_size=test_frac, stratify=list(labels), random_state=seed)


def copies_across(groups: pd.DataFrame, train_ids: Sequence[str], test_ids: Sequence[str]) -> int:
    """How many ``test_ids`` have a member of their duplicate group among ``train_ids``."""
    group = groups.set_index("image_id")["group"]
    seen = {group[i] for i in train_ids}
    return int(sum(group[i] in seen for i in test_ids))


def check_no_group_crosses(manifest: pd.DataFrame) -> None:
    """Raise :class:`LeakageError` if a duplicate group spans two splits or two folds."""
    per_group = manifest.groupby("group").agg(splits=("split", "nunique"), folds=("fold", "nunique"))
    bad = per_group[(per_group["splits"] > 1) | (per_group["folds"] > 1)]
    if len(bad):
        raise LeakageError(f"{len(bad)} duplicate group(s) cross a split or fold, e.g. {bad.index[0]!r}")


def manifest_hash(manifest: pd.DataFrame) -> str:
    cols = ["image_id", "label", "group", "split", "fold"]
    return hashlib.sha256(manifest[cols].astype(str).to_csv(index=False).encode()).hexdigest()[:16]


def load_or_make_split(path: Path, groups: pd.DataFrame, **params) -> pd.DataFrame:
    """Reuse the manifest at ``path`` when it was made with the same parameters (its hash
    is checked, so an edited manifest is noticed); otherwise make and write it.

    A manifest with *different* parameters is never overwritten silently: the models in
    that run folder were trained on it. Use another run folder, or delete it.
    """
    path = Path(path)
    meta_path = path.with_suffix(".json")
    params = {k: v for k, v in params.items()}
    if path.exists():
        meta = read_json(meta_path, {})
        manifest = pd.read_csv(path, keep_default_na=False)
        if meta.get("params") != json.loads(json.dumps(params)):
            raise ValueError(
                f"{path}: made with {meta.get('params')}, asked for {params}. Use another run folder "
                "(run_dir) or delete this one to start over."
            )
        if meta.get("sha") != manifest_hash(manifest):
            raise ValueError(f"{path}: contents do not match the recorded hash (was it edited?)")
        return manifest
    manifest = make_split(groups, **params)
    atomic_write_text(path, manifest.to_csv(index=False))
    atomic_write_json(meta_path, {"params": params, "sha": manifest_hash(manifest)})
    return manifest


def split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Class counts per split and per training fold: the table a reader checks first."""
    m = manifest.copy()
    m["part"] = np.where(m["split"] == "train", "train fold " + m["fold"].astype(str), m["split"])
    table = pd.crosstab(m["part"], m["label"], margins=True, margins_name="total")
    return table[[c for c in ("normal", "benign", "malignant", "total") if c in table.columns]]


# --- an external set's patients: development and evaluation ------------------------------------

DEVELOPMENT, EVALUATION = "development", "evaluation"
PATIENT_STRATA = ("malignant", "benign", "normal")  # a patient's stratum: the gravest label among their scans


def patient_strata(index: pd.DataFrame) -> pd.Series:
    """Per patient, what they have: ``malignant`` if any of their scans is, else ``benign`` if
    any is, else ``normal``. Stratifying on it keeps each kind of patient on both sides."""
    labels = index[["patient", "label"]].astype(str)
    rank = labels["label"].map({c: k for k, c in enumerate(PATIENT_STRATA)})
    return rank.groupby(labels["patient"]).min().map(dict(enumerate(PATIENT_STRATA))).rename("stratum")


def make_patient_split(index: pd.DataFrame, dev_frac: float = 1 / 3, seed: int = 0) -> pd.DataFrame:
    """One row per patient: ``patient``, ``stratum``, ``n_images``, ``role`` (development or
    evaluation). Within each stratum the patients are shuffled (seeded) and ``round(n * dev_frac)``
    go to development, at least one where the stratum has two or more; the rest are evaluation.
    Choices made to travel, and adaptation, may read the development patients; the evaluation
    patients are only ever scored (:func:`check_development_only`)."""
    if not 0 < dev_frac < 1:
        raise ValueError(f"dev_frac must be strictly between 0 and 1, got {dev_frac}")
    strata = patient_strata(index)
    sizes = index.groupby(index["patient"].astype(str)).size()
    rng = np.random.default_rng(seed)
    rows = []
    for stratum in PATIENT_STRATA:
        patients = np.array(sorted(strata.index[strata == stratum]), dtype=object)
        rng.shuffle(patients)
        n_dev = round(len(patients) * dev_frac)
        n_dev = max(n_dev, 1) if len(patients) >= 2 else n_dev
        for k, p in enumerate(patients):
            rows.append({"patient": p, "stratum": stratum, "n_images": int(sizes[p]),
                         "role": DEVELOPMENT if k < n_dev else EVALUATION})  # fmt: skip
    return pd.DataFrame(rows).sort_values(["role", "stratum", "patient"]).reset_index(drop=True)


def patient_split_hash(split: pd.DataFrame) -> str:
    return hashlib.sha256(split[["patient", "role"]].astype(str).to_csv(index=False).encode()).hexdigest()[:16]


def load_or_make_patient_split(path: Path, index: pd.DataFrame, dev_frac: float = 1 / 3, seed: int = 0) -> pd.DataFrame:
    """The external set's patient split at ``path`` (written once, atomically, with its hash and
    parameters beside it), or made and written now. A split on disk is reused only if it was
    made with the same parameters, is unedited and covers exactly this set's patients: every
    later figure depends on which patients were never looked at."""
    path, params = Path(path), {"dev_frac": float(dev_frac), "seed": int(seed)}
    meta_path = path.with_suffix(".json")
    if path.exists():
        split, meta = pd.read_csv(path, keep_default_na=False, dtype={"patient": str}), read_json(meta_path, {})
        if meta.get("params") != params:
            raise ValueError(f"{path}: made with {meta.get('params')}, asked for {params}; delete it to start over")
        if meta.get("sha") != patient_split_hash(split):
            raise LeakageError(f"{path}: contents do not match the recorded hash (was it edited?)")
        if set(split["patient"]) != set(index["patient"].astype(str)):
            raise ValueError(f"{path}: made for other patients than this set's; delete it to start over")
        return split
    split = make_patient_split(index, dev_frac, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, split.to_csv(index=False))
    atomic_write_json(meta_path, {"params": params, "sha": patient_split_hash(split)})
    return split


def patients_with_role(split: pd.DataFrame, role: str) -> set[str]:
    return set(split.loc[split["role"] == role, "patient"].astype(str))


def check_development_only(patients: Sequence[str], split: pd.DataFrame, what: str = "this fit") -> None:
    """Refuse (:class:`LeakageError`) when anything about to be fitted or chosen reads an
    evaluation patient, or a patient the split does not know. Every fit on external data calls it."""
    used = set(map(str, patients))
    leaked = sorted(used & patients_with_role(split, EVALUATION))
    if leaked:
        raise LeakageError(f"{what} reads {len(leaked)} evaluation patient(s) ({', '.join(leaked[:5])}); "
                           "evaluation patients are only ever scored")  # fmt: skip
    unknown = sorted(used - set(split["patient"].astype(str)))
    if unknown:
        raise LeakageError(f"{what} reads patient(s) the split does not list ({', '.join(unknown[:5])})")


def development_rows(table: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """The rows of a per-image table (with a ``patient`` column) whose patient is a development one."""
    rows = table[table["patient"].astype(str).isin(patients_with_role(split, DEVELOPMENT))]
    check_development_only(rows["patient"], split, "development_rows")
    return rows


def evaluation_rows(table: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    """The rows of a per-image table whose patient is an evaluation one: scored, never fitted on."""
    return table[table["patient"].astype(str).isin(patients_with_role(split, EVALUATION))]
