"""Profiles, the run folder layout and seeding.

Every notebook reads and writes through :class:`RunPaths`, so no notebook hard-codes a
path and any notebook can be re-run alone: it finds what the earlier ones wrote.
"""
from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

PROFILES = ("quick", "cpu", "gpu")
CLASSES = ("normal", "benign", "malignant")


def load_profile(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the parameters of profile ``name`` (quick / cpu / gpu), with ``overrides``
    merged in (nested dicts merge key by key), so a papermill run can change one knob."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    text = resources.files("busi_utils.profiles").joinpath(f"{name}.yaml").read_text()
    cfg = yaml.safe_load(text)
    return _merge(cfg, overrides or {})


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def repo_root() -> Path:
    """The course checkout (the folder holding ``busi_utils``); ``data/`` and ``runs/``
    live there by default."""
    return Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Where derived data (extracted zips, resized images, synthetic data) is kept:
    ``$BUSI_CACHE``, else ``~/.cache/busi-course``. Never inside the dataset folder."""
    path = Path(os.environ.get("BUSI_CACHE", Path.home() / ".cache" / "busi-course"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class RunPaths:
    """The layout of one run folder, ``runs/<profile>/`` by default.

    data/    index.csv, duplicate groups, split manifest (01)
    models/  exported U-Net and classifiers (02, 04)
    masks/   leakage-safe predicted masks + manifest (03)
    preds/   test-set probabilities of every variant (04)
    notebooks/  the executed notebooks (papermill)
    """

    root: Path

    @classmethod
    def for_profile(cls, profile: str, run_dir: str | os.PathLike | None = None) -> RunPaths:
        root = Path(run_dir) if run_dir else repo_root() / "runs" / profile
        paths = cls(root.resolve())
        for sub in (paths.data, paths.models, paths.masks, paths.preds, paths.notebooks):
            sub.mkdir(parents=True, exist_ok=True)
        return paths

    data = property(lambda self: self.root / "data")
    models = property(lambda self: self.root / "models")
    masks = property(lambda self: self.root / "masks")
    preds = property(lambda self: self.root / "preds")
    notebooks = property(lambda self: self.root / "notebooks")
    index_csv = property(lambda self: self.data / "index.csv")
    source_json = property(lambda self: self.data / "source.json")
    groups_csv = property(lambda self: self.data / "duplicate_groups.csv")
    split_csv = property(lambda self: self.data / "split_manifest.csv")
    metrics_json = property(lambda self: self.root / "metrics.json")
    timing_json = property(lambda self: self.root / "timing.json")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so the same seed gives the same split and numbers
    (on the CPU; GPU kernels may still differ in the last digits)."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch

        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(False)
    except ImportError:  # the data layer works without torch
        pass


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so an interrupted
    run never leaves a half-written file that a later run would trust."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path, default: Any = None) -> Any:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def cached_csv(path: Path, make: Callable[[], Any]) -> Any:
    """Return the DataFrame saved at ``path``, or make it, save it atomically and return it:
    the resume-don't-recompute rule for every table a notebook derives."""
    import pandas as pd

    path = Path(path)
    if path.exists():
        return pd.read_csv(path, keep_default_na=False)
    df = make()
    atomic_write_text(path, df.to_csv(index=False))
    return df


def save_checkpoint(path: Path, state_dict: dict, info: dict) -> None:
    """Weights plus the recipe that rebuilds and audits the model, written atomically:
    a portable export (no pickled code), so loading needs only this package."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({"state_dict": state_dict, "info": info}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    """``(state_dict, info)`` of a checkpoint written by :func:`save_checkpoint`."""
    import torch

    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    return ckpt["state_dict"], ckpt["info"]
