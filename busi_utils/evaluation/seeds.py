"""The seed study's record, ``benchmarks/seed_spread.csv``: one row per training seed and
variant and profile, written by ``scripts/seed_spread.py`` and read by the README's table and
chapters 5 and 7.

It holds a run's split and stage-1 masks fixed and retrains stage 2 per seed, so its spread is
what a second run on the same machine would move. External columns (``ext_*``) hold each seed's
members run over an external set: reported, never used to choose.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from busi_utils.core.config import repo_root

EXTERNAL_KEYS = ("macro_f1", "benign_malignant_auc", "malignant_recall", "lesions_called_normal")


def record_path() -> Path:
    return repo_root() / "benchmarks" / "seed_spread.csv"


def external_column(key: str) -> str:
    """The record's column for an external metric: ``ext_<key>``."""
    return f"ext_{key}"


def read_record(path: Path | None = None, profile: str = "cpu") -> tuple[pd.DataFrame, list[str]]:
    """The rows of one profile's largest ensemble studied (the profile's own, when it was the
    last one run) and the external columns that every one of them has: a seed not scored outside
    would make a mean over fewer seeds than the BUSI columns beside it, so such a column is left
    out. An empty frame when there is no record."""
    path = path or record_path()
    if not path.exists():
        return pd.DataFrame(), []
    table = pd.read_csv(path)
    table = table[table["profile"] == profile] if "profile" in table else table
    table = table[table["members"] == table["members"].max()].reset_index(drop=True)
    ext = [external_column(k) for k in EXTERNAL_KEYS]
    return table, [c for c in ext if c in table and len(table) and table[c].notna().all()]


def spread_tables(spread: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The record's test macro-F1 per seed and variant, and each variant's mean and SD over seeds
    (two empty frames when there is no record yet)."""
    if spread.empty:
        return pd.DataFrame(), pd.DataFrame()
    by_seed = spread.pivot(index="seed", columns="variant", values="macro_f1").rename_axis(
        "test macro-F1, by training seed"
    )
    return by_seed, spread.groupby("variant", sort=False)[["accuracy", "macro_f1"]].agg(["mean", "std"])


def describe(spread: pd.DataFrame) -> str:
    """One line on the record: seeds, members, the method's macro-F1 gap to image-only per seed (no tally:
    a few seeds make no verdict), and where and
    when it was made (``calib_ms``: one reference network's milliseconds per image on that machine)."""
    if spread.empty:
        return f"no {record_path().name} yet: python scripts/seed_spread.py makes it"
    by_seed = spread.pivot(index="seed", columns="variant", values="macro_f1")
    gaps = ", ".join(f"{gap:+.3f}" for gap in by_seed["method"] - by_seed["image_only"])
    return (
        f"{len(by_seed)} seeds, {spread['members'].iloc[0]} members per view; method minus image-only macro-F1 per"
        f" seed: {gaps}; made {spread['date'].max()}, calib_ms {spread['calib_ms'].max():.1f}"
    )
