"""Profiles, where the course keeps things, and seeding.

The run folder's layout is :mod:`busi_utils.core.runfolder`; writing files is :mod:`busi_utils.core.files`.
"""

from __future__ import annotations

import copy
import os
import random
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
    return Path(__file__).resolve().parents[2]  # busi_utils/core/config.py -> the checkout


def cache_dir() -> Path:
    """Where derived data (extracted zips, resized images, synthetic data) is kept:
    ``$BUSI_CACHE``, else ``~/.cache/busi-course``. Never inside the dataset folder."""
    path = Path(os.environ.get("BUSI_CACHE", Path.home() / ".cache" / "busi-course"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def shown_path(path: os.PathLike | str) -> str:
    """``path`` as a chapter prints it: relative to the checkout, or under the name that configures
    it (``$BUSI_ROOT``, ``$BUS_UCLM_ROOT``, ``$BUSI_CACHE``, ``~``), never this machine's absolute
    path, so an executed chapter reads the same on every machine and leaks no one's folders."""
    path = Path(path).expanduser().resolve()
    named = [(f"${v}", os.environ.get(v)) for v in ("BUSI_ROOT", "BUS_UCLM_ROOT")]
    named += [("$BUSI_CACHE", str(cache_dir())), (".", str(repo_root())), ("~", str(Path.home()))]
    for name, base in named:
        if not base:
            continue
        base_path = Path(base).expanduser().resolve()
        if path == base_path:
            return name if name != "." else "."
        if path.is_relative_to(base_path):
            rest = path.relative_to(base_path).as_posix()
            return rest if name == "." else f"{name}/{rest}"
    return path.name


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so the same seed gives the same split and numbers
    (on the CPU; GPU kernels may still differ in the last digits)."""
    random.seed(seed)
    np.random.seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch  # light CLI path: loaded when used

        torch.manual_seed(seed)
        # Not True: the CPU kernels this course uses are deterministic already (tests/
        # test_reproducibility.py trains both stages twice and gets identical weights), and on
        # CUDA True raises for ops without a deterministic version (e.g. bilinear upsampling's
        # backward) unless CUBLAS_WORKSPACE_CONFIG is set; fastai's set_seed(reproducible=True)
        # turns off cuDNN's benchmark mode instead.
        torch.use_deterministic_algorithms(False)
    except ImportError:  # the data layer works without torch
        pass
