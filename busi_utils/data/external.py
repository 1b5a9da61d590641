"""Labelled external test sets: another hospital's scans, read for the unchanged pipeline.

Two layouts are understood (a folder, or a zip of one, found through ``$BUS_UCLM_ROOT`` or an
explicit path; the folder is only ever read):

**BUS-UCLM** as published (Vallez et al., Scientific Data 2025; CC BY-NC 4.0)::

    BUS-UCLM/images/<PATIENT>_<NNN>.png|.jpg    scans (RGB, coloured scanner overlays)
    BUS-UCLM/masks/<PATIENT>_<NNN>.png          black background, green benign, red malignant
    BUS-UCLM/INFO.csv                           ';'-separated, UTF-8 with BOM:
                                                Image;Resolution;Label;Doppler;Marks;Combined

The four-letter prefix is the patient.

**Generic**, for your own data::

    <folder>/images/<name>.<png|jpg|bmp|tif>    scans
    <folder>/masks/<name>.png                   optional, same stem; any colour, lesion = bright
    <folder>/labels.csv                         columns: image, label [, patient, any others]

``label`` is normal / benign / malignant (any case). Without a ``patient`` column every image
is its own patient. Images without a mask still count for classification (Dice is skipped).

Masks are binarised whatever their colours (a pixel is lesion when any channel is at least half
bright). Everything is checked before any model loads, and anything that cannot be used is a
:class:`busi_utils.data.BusiDataError` (or one of its named kinds in :mod:`busi_utils.core.errors`)
naming the file, the line where there is one, and the problem:

* the labels table: empty, header only, not UTF-8 (a BOM is fine), a column missing, an unknown
  label, an empty name (:class:`LabelsFileError`);
* anything counted twice: a repeated row, an image listed twice, one stem in two files
  (``scan.png`` and ``scan.jpg``), two masks for one scan (:class:`DuplicateEntryError`);
* masks: unreadable, empty or truncated files, a lesion scan whose mask has no lesion pixel or a
  normal scan whose mask has one, and a mask of another size than its scan (:class:`MaskError`).
  A mask of another size is resized (nearest) and counted only where that is asked for
  (``resize_masks``), and by default only in the BUS-UCLM layout, whose publishers ship 13 masks
  (patient HESN) at another size; never when a side differs by more than 2x;
* a subfolder where files are expected (:class:`LayoutError`), a mask or label row without an
  image, an image without a label row, an unreadable image.

Nothing is skipped, resized or counted silently.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from busi_utils.core.config import CLASSES, cache_dir, repo_root
from busi_utils.data import BusiDataError, extract_zip
from busi_utils.data.external_checks import (
    IMAGE_EXTS,
    LAYOUT_FILES,
    binarise_mask,
    check_image,
    check_mask,
    label_rows,
    listed_files,
)
from busi_utils.data.synthetic import make_synthetic_external

__all__ = [
    "ENV_VAR",
    "find_external_dir",
    "resolve_external",
    "find_external",
    "detect_layout",
    "build_external_index",
    "load_external_pair",
    "binarise_mask",
]

ENV_VAR = "BUS_UCLM_ROOT"


def find_external_dir(path: os.PathLike | str) -> Path:
    """The folder holding ``images/`` and ``INFO.csv`` or ``labels.csv``: ``path`` or a child."""
    path = Path(path)
    if not path.is_dir():
        raise BusiDataError(path, "is not a folder")
    for candidate in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
        if (candidate / "images").is_dir() and any((candidate / f).is_file() for f in LAYOUT_FILES.values()):
            return candidate
    raise BusiDataError(
        path,
        "wrongly laid out: expected images/ and INFO.csv (BUS-UCLM) or labels.csv (generic), directly or one folder down",
    )


def resolve_external(root: os.PathLike | str | None = None) -> Path | None:
    """The external set's folder from ``root`` or ``$BUS_UCLM_ROOT`` (a folder or a zip,
    extracted once into the cache); ``None`` when neither is set. A set path must work."""
    root = root or os.environ.get(ENV_VAR)
    if not root:
        return None
    path = Path(root).expanduser()
    if path.is_file() and path.suffix.lower() == ".zip":
        return extract_zip(path, locate=find_external_dir)
    if not path.exists():
        raise BusiDataError(path, "does not exist")
    return find_external_dir(path)


def find_external(root: os.PathLike | str | None = None) -> tuple[Path, str]:
    """The external set and its kind, in this order: ``root`` or ``$BUS_UCLM_ROOT`` (must
    work), ``data/BUS-UCLM/`` or ``data/BUS-UCLM*.zip`` in the checkout, else a small
    **synthetic** set (kind ``synthetic``: its numbers are software tests, never results).
    BUS-UCLM is on Mendeley Data (CC BY-NC 4.0); download it yourself, it is never fetched."""
    explicit = resolve_external(root)
    if explicit is not None:
        return explicit, "zip" if str(root or os.environ.get(ENV_VAR, "")).lower().endswith(".zip") else "folder"
    data_dir = repo_root() / "data"
    for candidate in [data_dir / "BUS-UCLM", *sorted(data_dir.glob("BUS-UCLM*.zip"))]:
        if candidate.exists():
            return resolve_external(candidate), "zip" if candidate.suffix == ".zip" else "folder"

    warnings.warn(
        f"BUS-UCLM not found (${ENV_VAR} unset, nothing in {data_dir}); using a SYNTHETIC external set", stacklevel=2
    )
    return make_synthetic_external(cache_dir() / "synthetic-external", layout="bus_uclm"), "synthetic"


def detect_layout(root: Path) -> str:
    """``bus_uclm`` when ``INFO.csv`` is present, else ``generic`` (``labels.csv``)."""
    return "bus_uclm" if (Path(root) / LAYOUT_FILES["bus_uclm"]).is_file() else "generic"


def build_external_index(
    root: os.PathLike | str, progress: bool = True, resize_masks: bool | None = None
) -> pd.DataFrame:
    """One row per labelled image: ``image_id``, ``image_path``, ``mask_paths`` ('' if none),
    ``label``, ``patient``, ``mask_resized``, sizes, hashes and the layout's attributes
    (``doppler``, ``marks`` for BUS-UCLM). Validates everything (see the module docstring).
    ``resize_masks``: resize masks of another size than their scan (and count them); by default
    only in the BUS-UCLM layout (13 such masks in the published set)."""
    root = find_external_dir(root)
    layout = detect_layout(root)
    resize_masks = layout == "bus_uclm" if resize_masks is None else resize_masks
    images = listed_files(root / "images", "image")
    for p in images.values():
        if p.suffix.lower() not in IMAGE_EXTS:
            raise BusiDataError(p, f"not an image file (expected one of {', '.join(IMAGE_EXTS)})")
    masks_dir = root / "masks"
    masks = {p.stem: p for p in listed_files(masks_dir, "mask").values()} if masks_dir.is_dir() else {}
    rows = label_rows(root, layout)
    listed = {r["image"] for r in rows}
    unlabelled = sorted(set(images) - listed)
    if unlabelled:
        raise BusiDataError(images[unlabelled[0]], f"image without a label row in {LAYOUT_FILES[layout]}")
    missing = [r for r in rows if r["image"] not in images]
    if missing:
        raise BusiDataError(
            root / "images" / missing[0]["image"],
            f"listed in {LAYOUT_FILES[layout]} but missing (line {missing[0]['line']})",
        )
    stems = {Path(n).stem for n in images}
    orphans = sorted(set(masks) - stems)
    if orphans:
        raise BusiDataError(masks[orphans[0]], "mask without an image")
    out = []
    for rec in tqdm(rows, desc=f"checking {root.name}", disable=not progress):
        path = images[rec.pop("image")]
        line = f"{LAYOUT_FILES[layout]} line {rec.pop('line')}"
        sha, (w, h) = check_image(path)
        mask = masks.get(path.stem)
        mask_sha, resized = "", False
        if mask is not None:
            mask_sha, resized = check_mask(mask, path, (w, h), rec["label"], line, resize_masks)
        out.append(
            {
                "image_id": f"{rec['patient']}/{path.stem}",
                **rec,
                "image_path": str(path),
                "mask_paths": str(mask) if mask else "",
                "rel_path": f"images/{path.name}",
                "width": w,
                "height": h,
                "has_mask": mask is not None,
                "mask_resized": resized,
                "sha256": sha,
                "mask_sha256": mask_sha,
                "layout": layout,
            }
        )
    index = pd.DataFrame(out)
    index["label"] = pd.Categorical(index["label"], categories=list(CLASSES))
    return index


def load_external_pair(row) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale image and boolean mask (empty when there is none; resized to the image,
    nearest, when its size differs) of one external index row."""
    get = row.get if isinstance(row, dict) else lambda k: getattr(row, k)
    with Image.open(get("image_path")) as img:
        gray = np.asarray(img.convert("L"))
    mask_path = get("mask_paths")
    if not mask_path:
        return gray, np.zeros(gray.shape, dtype=bool)
    with Image.open(mask_path) as m:
        if m.size != gray.shape[::-1]:
            m = m.convert("RGB").resize(gray.shape[::-1], Image.NEAREST)
        return gray, binarise_mask(m)


def subset_patients(index: pd.DataFrame, max_images: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``max_images`` images made of whole patients drawn at random (seeded); the quick
    profile's small external set. ``None`` keeps everything."""
    if not max_images or len(index) <= max_images:
        return index.reset_index(drop=True)
    patients = index["patient"].drop_duplicates().sample(frac=1.0, random_state=seed)
    keep, n = [], 0
    for p in patients:
        size = int((index["patient"] == p).sum())
        if n and n + size > max_images:
            continue
        keep.append(p)
        n += size
    return index[index["patient"].isin(keep)].reset_index(drop=True)


def image_statistics(images: np.ndarray) -> pd.DataFrame:
    """Per image: mean and standard deviation of gray levels, share of near-black pixels
    (the region outside the scan sector) and of saturated pixels: where scanners differ."""
    flat = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    return pd.DataFrame(
        {
            "mean": flat.mean(1),
            "std": flat.std(1),
            "dark_fraction": (flat < 10).mean(1),
            "bright_fraction": (flat > 245).mean(1),
        }
    )


def unlabelled_index(root: os.PathLike | str) -> pd.DataFrame:
    """The scans of a folder without labels (every image under it, each its own patient): what a
    label-free adaptation reads. The rows carry ``label`` ``"unknown"`` and no mask; an unreadable
    file is an error naming it. Labelled layouts go through :func:`build_external_index`."""
    root = Path(root)
    files = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS and "mask" not in p.parts
    )
    rows = []
    for path in files:
        try:
            with Image.open(path) as img:
                width, height = img.size
                img.convert("L").load()
        except Exception as err:  # noqa: BLE001 (any decoding failure is the same user error)
            raise BusiDataError(f"{path}: not a readable image ({type(err).__name__})") from None
        rel = path.relative_to(root).as_posix()
        rows.append(
            {
                "image_id": rel, "rel_path": rel, "image_path": str(path), "mask_paths": "", "label": "unknown",
                "patient": path.stem, "has_mask": False, "mask_resized": False, "height": height, "width": width,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "mask_sha256": "",
            }
        )  # fmt: skip
    return pd.DataFrame(rows)
