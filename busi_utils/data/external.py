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
bright); a mask whose size differs from its image is resized (nearest) and counted. Anything
that cannot be used is a :class:`busi_utils.data.BusiDataError` naming the file and the
problem: an unknown label, an unreadable image, a mask or label row without an image, an image
without a label row. Nothing is skipped silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from busi_utils.core.config import CLASSES, cache_dir, repo_root
from busi_utils.data import BusiDataError, extract_zip
from busi_utils.data.synthetic import make_synthetic_external

__all__ = [
    "ENV_VAR",
    "find_external_dir",
    "resolve_external",
    "find_external",
    "detect_layout",
    "build_external_index",
    "load_external_pair",
]

ENV_VAR = "BUS_UCLM_ROOT"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LAYOUT_FILES = {"bus_uclm": "INFO.csv", "generic": "labels.csv"}


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


def _read_table(path: Path) -> list[dict]:
    """Rows of a ';' or ',' separated CSV (BOM tolerated), keys stripped."""
    text = path.read_text(encoding="utf-8-sig")
    dialect = ";" if text.splitlines()[0].count(";") > text.splitlines()[0].count(",") else ","
    return [
        {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        for row in csv.DictReader(io.StringIO(text), delimiter=dialect)
    ]


def _label(value: str, where: Path, line: int) -> str:
    label = value.strip().lower()
    if label not in CLASSES:
        raise BusiDataError(where, f"line {line}: unknown label {value!r} (expected {', '.join(CLASSES)})")
    return label


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "y", "true", "1")


def _label_rows(root: Path, layout: str) -> list[dict]:
    """``image`` (file name), ``label``, ``patient`` and extra attributes, one per labelled image."""
    table = root / LAYOUT_FILES[layout]
    rows = _read_table(table)
    out = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        if layout == "bus_uclm":
            name = row.get("Image", "")
            rec = {
                "image": name,
                "label": _label(row.get("Label", ""), table, n),
                "patient": Path(name).stem.split("_")[0],
                "doppler": _yes(row.get("Doppler", "")),
                "marks": _yes(row.get("Marks", "")),
            }
        else:
            if "image" not in row or "label" not in row:
                raise BusiDataError(table, "needs the columns 'image' and 'label' (and optionally 'patient')")
            name = row["image"]
            rec = {
                **{k: v for k, v in row.items() if k not in ("image", "label", "patient")},
                "image": name,
                "label": _label(row["label"], table, n),
                "patient": row.get("patient") or Path(name).stem,
            }
        if not name:
            raise BusiDataError(table, f"line {n}: empty image name")
        out.append(rec)
    return out


def _check_image(path: Path) -> tuple[str, tuple[int, int]]:
    """sha256 and (width, height) of a fully decodable image, else a named error."""
    raw = path.read_bytes()
    if not raw:
        raise BusiDataError(path, "empty file")
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except UnidentifiedImageError:
        raise BusiDataError(path, "not a readable image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BusiDataError(path, f"unreadable or truncated image ({err})") from None
    return hashlib.sha256(raw).hexdigest(), img.size


def build_external_index(root: os.PathLike | str, progress: bool = True) -> pd.DataFrame:
    """One row per labelled image: ``image_id``, ``image_path``, ``mask_paths`` ('' if none),
    ``label``, ``patient``, ``mask_resized``, sizes, hashes and the layout's attributes
    (``doppler``, ``marks`` for BUS-UCLM). Validates everything (see the module docstring)."""
    root = find_external_dir(root)
    layout = detect_layout(root)
    images = {p.name: p for p in sorted((root / "images").iterdir()) if p.is_file() and not p.name.startswith(".")}
    for p in images.values():
        if p.suffix.lower() not in IMAGE_EXTS:
            raise BusiDataError(p, f"not an image file (expected one of {', '.join(IMAGE_EXTS)})")
    masks_dir = root / "masks"
    masks = (
        {p.stem: p for p in sorted(masks_dir.iterdir()) if p.is_file() and not p.name.startswith(".")}
        if masks_dir.is_dir()
        else {}
    )
    rows = _label_rows(root, layout)
    listed = {r["image"] for r in rows}
    unlabelled = sorted(set(images) - listed)
    if unlabelled:
        raise BusiDataError(images[unlabelled[0]], f"image without a label row in {LAYOUT_FILES[layout]}")
    missing = [r["image"] for r in rows if r["image"] not in images]
    if missing:
        raise BusiDataError(root / "images" / missing[0], f"listed in {LAYOUT_FILES[layout]} but missing")
    stems = {Path(n).stem for n in images}
    orphans = sorted(set(masks) - stems)
    if orphans:
        raise BusiDataError(masks[orphans[0]], "mask without an image")
    out = []
    for rec in tqdm(rows, desc=f"checking {root.name}", disable=not progress):
        path = images[rec["image"]]
        sha, (w, h) = _check_image(path)
        mask = masks.get(path.stem)
        mask_sha, resized = "", False
        if mask is not None:
            mask_sha, (mw, mh) = _check_image(mask)
            resized = (mw, mh) != (w, h)
        out.append(
            {
                "image_id": f"{rec['patient']}/{path.stem}",
                **{k: v for k, v in rec.items() if k != "image"},
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


def binarise_mask(mask: Image.Image) -> np.ndarray:
    """Lesion where any channel is at least half bright: green, red or white masks alike."""
    arr = np.asarray(mask.convert("RGB") if mask.mode not in ("1", "L") else mask.convert("L"))
    return (arr.max(axis=2) if arr.ndim == 3 else arr) >= 128


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
