"""Validating, indexing and loading BUSI as Kaggle ships it::

    Dataset_BUSI_with_GT/{benign,malignant,normal}/
        benign (1).png  benign (1)_mask.png  [benign (1)_mask_1.png ...]

Every file is checked (a damaged PNG, a mask without its image, a mask of another size are
named, never skipped); masks in modes 1, RGB and RGBA load to one boolean array, and extra
masks (``_mask_1``) are merged. Where the files come from is :mod:`busi_utils.data.sources`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from busi_utils.core.config import CLASSES
from busi_utils.core.errors import BusiDataError
from busi_utils.core.files import atomic_write_text
from busi_utils.data.sources import find_dataset_dir

MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<extra>\d+))?\.png$", re.IGNORECASE)
#: a pixel whose RGB channels differ by more than this is coloured (a mark, not tissue)
COLOUR_DELTA = 40
#: an image with more coloured pixels than this carries colour marks
COLOUR_MIN_PIXELS = 20


# --------------------------------------------------------------------------- validating + indexing


def list_files(root: os.PathLike | str) -> dict[str, dict[str, list[Path]]]:
    """Pair every image with its masks, per class folder, or raise :class:`BusiDataError`.

    Returns ``{label: {image_name: [image_path, mask_path, extra_mask...]}}``.
    Hidden files (``.DS_Store``) are ignored; anything else that is not a PNG is an error.
    """
    root = find_dataset_dir(root)
    extra_dirs = [p for p in root.iterdir() if p.is_dir() and p.name not in CLASSES and not p.name.startswith(".")]
    if extra_dirs:
        raise BusiDataError(extra_dirs[0], f"unknown class folder (expected {', '.join(CLASSES)})")
    missing = [c for c in CLASSES if not (root / c).is_dir()]
    if missing:
        raise BusiDataError(root, f"wrongly laid out: class folder(s) missing: {', '.join(missing)}")
    found: dict[str, dict[str, list[Path]]] = {}
    for label in CLASSES:
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for path in sorted((root / label).iterdir()):
            if path.name.startswith("."):
                continue
            if path.is_dir():
                raise BusiDataError(path, "unexpected folder inside a class folder")
            if path.suffix.lower() != ".png":
                raise BusiDataError(path, "not an image file (expected .png)")
            m = MASK_RE.match(path.name)
            if m:
                masks.setdefault(m["stem"], []).append((int(m["extra"] or 0), path))
            else:
                images[path.stem] = path
        if not images:
            raise BusiDataError(root / label, "empty class folder: no images")
        orphans = sorted(set(masks) - set(images))
        if orphans:
            raise BusiDataError(masks[orphans[0]][0][1], "mask without an image")
        entries = {}
        for stem, image_path in images.items():
            if stem not in masks:
                raise BusiDataError(image_path, "image without a mask (expected '<name>_mask.png')")
            entries[stem] = [image_path] + [p for _, p in sorted(masks[stem])]
        found[label] = entries
    return found


def open_png(path: Path, data: bytes | None = None) -> Image.Image:
    """Open and fully decode a PNG, turning PIL's many failure modes into one clear error."""
    try:
        img = Image.open(io.BytesIO(data) if data is not None else path)
        img.load()  # decodes every byte: a truncated file fails here, not later in training
        return img
    except UnidentifiedImageError as err:
        raise BusiDataError(path, "not a readable image (unidentified or corrupt PNG)") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise BusiDataError(path, f"unreadable or truncated PNG ({err})") from err


def _mask_array(img: Image.Image) -> np.ndarray:
    """A binary array from a mask in mode 1, L, P, RGB or RGBA: lesion where bright
    (and, with an alpha channel, where opaque)."""
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = np.asarray(img.convert("RGBA"))
        return (rgba[..., :3].max(axis=2) > 127) & (rgba[..., 3] > 127)
    return np.asarray(img.convert("L")) > 127


def colour_pixel_count(rgb: np.ndarray) -> int:
    """Pixels whose channels disagree: coloured annotations on a grayscale scan."""
    if rgb.ndim == 2:
        return 0
    rgb = rgb[..., :3].astype(np.int16)
    return int(((rgb.max(axis=2) - rgb.min(axis=2)) > COLOUR_DELTA).sum())


def _index_row(label: str, stem: str, paths: list[Path], root: Path) -> dict:
    image_path, mask_paths = paths[0], paths[1:]
    raw = image_path.read_bytes()
    img = open_png(image_path, raw)
    colour = colour_pixel_count(np.asarray(img.convert("RGB"))) if img.mode not in ("L", "1", "I", "I;16") else 0
    union = np.zeros((img.height, img.width), dtype=bool)
    mask_modes, mask_hash = [], hashlib.sha256()
    for mpath in mask_paths:
        mraw = mpath.read_bytes()
        mask = open_png(mpath, mraw)
        if mask.size != img.size:
            raise BusiDataError(
                mpath, f"mask size {mask.size[0]}x{mask.size[1]} differs from image size {img.width}x{img.height}"
            )
        mask_modes.append(mask.mode)
        mask_hash.update(mraw)
        union |= _mask_array(mask)
    return {
        "image_id": stem,
        "label": label,
        "image_path": str(image_path),
        "rel_path": str(image_path.relative_to(root)),
        "mask_paths": ";".join(str(p) for p in mask_paths),
        "n_masks": len(mask_paths),
        "width": img.width,
        "height": img.height,
        "mode": img.mode,
        "mask_modes": ";".join(mask_modes),
        "colour_pixels": colour,
        "has_colour_marks": colour > COLOUR_MIN_PIXELS,
        "mask_fraction": float(union.mean()),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "mask_sha256": mask_hash.hexdigest(),
    }


def build_index(root: os.PathLike | str, progress: bool = True, workers: int = 2) -> pd.DataFrame:
    """One row per image: id, label, paths, size, mode, colour marks, lesion coverage and
    content hash. Every file is decoded once here, so bad input fails now, by name."""
    from tqdm.auto import tqdm  # light CLI path: loaded when used

    root = find_dataset_dir(root)
    jobs = [(label, stem, paths) for label, entries in list_files(root).items() for stem, paths in entries.items()]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(
            tqdm(pool.map(lambda j: _index_row(*j, root), jobs), total=len(jobs), desc="indexing", disable=not progress)
        )
    df = pd.DataFrame(rows)
    df["label"] = pd.Categorical(df["label"], categories=list(CLASSES))
    number = df["image_id"].str.extract(r"(\d+)", expand=False).fillna("0").astype(int)
    order = df.assign(_n=number).sort_values(["label", "_n", "image_id"]).index
    return df.loc[order].reset_index(drop=True)


def dataset_hash(index: pd.DataFrame) -> str:
    """A short hash of every image's and mask's bytes: names caches and results."""
    h = hashlib.sha256()
    for row in index.sort_values("rel_path").itertuples():
        h.update(f"{row.rel_path}:{row.sha256}:{row.mask_sha256}\n".encode())
    return h.hexdigest()[:16]


def load_or_build_index(root: os.PathLike | str, csv_path: Path, progress: bool = True) -> pd.DataFrame:
    """Reuse ``csv_path`` if it indexes the same folder, else build and save it atomically."""
    csv_path = Path(csv_path)
    if csv_path.exists():
        df = read_index(csv_path)
        if len(df) and Path(df["image_path"].iloc[0]).is_relative_to(find_dataset_dir(root)):
            return df
    df = build_index(root, progress=progress)
    atomic_write_text(csv_path, df.to_csv(index=False))
    return df


def read_index(csv_path: os.PathLike | str) -> pd.DataFrame:
    df = pd.read_csv(csv_path, keep_default_na=False)
    df["label"] = pd.Categorical(df["label"], categories=list(CLASSES))
    return df


# --------------------------------------------------------------------------- loading


def load_image(path: os.PathLike | str) -> np.ndarray:
    """The image as grayscale ``uint8`` (H, W): BUSI stores gray scans as RGB PNGs."""
    path = Path(path)
    return np.asarray(open_png(path).convert("L"))


def load_mask(mask_paths: str | Sequence[os.PathLike | str], shape: tuple[int, int] | None = None) -> np.ndarray:
    """The union of all of an image's masks as a boolean (H, W) array.

    ``mask_paths`` is a list or the index's ``;``-joined string. Extra masks
    (``_mask_1``, ``_mask_2``) mark further lesions of the same image, so they are OR-ed.
    A normal image's mask is empty.
    """
    if isinstance(mask_paths, str):
        mask_paths = [p for p in mask_paths.split(";") if p]
    union = None
    for p in mask_paths:
        mask = open_png(Path(p))
        arr = _mask_array(mask)
        if union is None:
            union = arr
        elif arr.shape != union.shape:
            raise BusiDataError(p, f"mask size {arr.shape[::-1]} differs from the first mask {union.shape[::-1]}")
        else:
            union = union | arr
    if union is None:
        if shape is None:
            raise ValueError("no mask paths and no shape given")
        union = np.zeros(shape, dtype=bool)
    if shape is not None and union.shape != tuple(shape):
        raise BusiDataError(
            mask_paths[0], f"mask size {union.shape[::-1]} differs from image size {tuple(shape)[::-1]}"
        )
    return union


def load_pair(row) -> tuple[np.ndarray, np.ndarray]:
    """Image and merged mask of one index row."""
    img = load_image(row["image_path"] if isinstance(row, dict) else row.image_path)
    masks = row["mask_paths"] if isinstance(row, dict) else row.mask_paths
    return img, load_mask(masks, img.shape)


def aspect_ratios(index: pd.DataFrame) -> dict[str, float]:
    """Height / width of each indexed image as stored: the shape descriptors restore the
    orientation that the square resize distorted (:func:`busi_utils.stage2.shape.shape_features`)."""
    return dict(zip(index["image_id"], index["height"] / index["width"]))
