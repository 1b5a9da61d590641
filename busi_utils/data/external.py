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
from busi_utils.core.errors import DuplicateEntryError, LabelsFileError, LayoutError, MaskError
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


def _read_table(path: Path) -> list[tuple[int, dict]]:
    """``(line, row)`` of a ';' or ',' separated CSV in UTF-8 (a BOM is fine), keys and values
    stripped; an empty file, a header without rows, another encoding or a ragged row is refused."""
    raw = path.read_bytes()
    if not raw.strip():
        raise LabelsFileError(
            path, "empty file (expected a header line, e.g. image,label,patient, then one row per image)"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise LabelsFileError(
            path, f"line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save it as UTF-8, with or without a BOM"
        ) from None
    header = text.lstrip().splitlines()[0]
    reader = csv.DictReader(io.StringIO(text), delimiter=";" if header.count(";") > header.count(",") else ",")
    rows = []
    for row in reader:
        if None in row:
            raise LabelsFileError(path, f"line {reader.line_num}: more fields than the header has columns")
        rows.append((reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in row.items()}))
    if not rows:
        raise LabelsFileError(path, "a header but no rows: no image is labelled")
    return rows


def _label(value: str, where: Path, line: int) -> str:
    label = value.strip().lower()
    if label not in CLASSES:
        raise LabelsFileError(where, f"line {line}: unknown label {value!r} (expected {', '.join(CLASSES)})")
    return label


def _yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "y", "true", "1")


REQUIRED_COLUMNS = {"bus_uclm": ("Image", "Label"), "generic": ("image", "label")}


def _label_rows(root: Path, layout: str) -> list[dict]:
    """``image`` (file name), ``label``, ``patient``, ``line`` and extra attributes, one per
    labelled image; a repeated row, image or stem is refused (:func:`_refuse_repeats`)."""
    table = root / LAYOUT_FILES[layout]
    rows = _read_table(table)
    missing = [c for c in REQUIRED_COLUMNS[layout] if c not in rows[0][1]]
    if missing:
        raise LabelsFileError(
            table, f"needs the columns {', '.join(REQUIRED_COLUMNS[layout])} (missing {', '.join(missing)}; "
            f"found {', '.join(rows[0][1]) or 'none'})"
        )  # fmt: skip
    out = []
    for n, row in rows:
        if layout == "bus_uclm":
            name = row["Image"]
            rec = {
                "image": name,
                "label": _label(row["Label"], table, n),
                "patient": Path(name).stem.split("_")[0],
                "doppler": _yes(row.get("Doppler", "")),
                "marks": _yes(row.get("Marks", "")),
            }
        else:
            name = row["image"]
            rec = {
                **{k: v for k, v in row.items() if k not in ("image", "label", "patient")},
                "image": name,
                "label": _label(row["label"], table, n),
                "patient": row.get("patient") or Path(name).stem,
            }
        if not name:
            raise LabelsFileError(table, f"line {n}: empty image name")
        out.append({**rec, "line": n, "_row": tuple(sorted(row.items()))})
    _refuse_repeats(out, table)
    return out


def _refuse_repeats(rows: list[dict], table: Path) -> None:
    """A row repeated, an image listed twice, or two names with one stem (masks and outputs are
    matched by stem, so ``scan.png`` and ``scan.jpg`` would share them): each counted twice."""
    by_row, by_name, by_stem = {}, {}, {}
    for r in rows:
        n, name, stem = r["line"], r["image"], Path(r["image"]).stem
        if r["_row"] in by_row:
            raise DuplicateEntryError(table, f"line {n}: repeats line {by_row[r['_row']]} ({name})")
        if name in by_name:
            raise DuplicateEntryError(table, f"line {n}: {name} is listed again (first on line {by_name[name]})")
        if stem in by_stem:
            first, line = by_stem[stem]
            raise DuplicateEntryError(
                table, f"line {n}: {name} and {first} (line {line}) share the stem {stem!r}; masks are matched by stem"
            )
        by_row[r["_row"]], by_name[name], by_stem[stem] = n, n, (name, n)
        del r["_row"]


def _files(folder: Path, what: str) -> dict[str, Path]:
    """The files of ``folder`` by name (hidden ones aside). A subfolder is refused: its files
    would be neither read nor reported. Two files with one stem are refused too."""
    out, stems = {}, {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            raise LayoutError(
                p, f"a folder inside {folder.name}/: expected only {what} files (subfolders are not read)"
            )
        if p.stem in stems:
            raise DuplicateEntryError(
                p, f"{what} file with the stem of {stems[p.stem].name}: one scan, two files (which one counts?)"
            )
        out[p.name], stems[p.stem] = p, p
    return out


def _open_checked(path: Path, what: str = "image") -> tuple[str, Image.Image]:
    """sha256 and the decoded image of a readable file, else a named error."""
    error = MaskError if what == "mask" else BusiDataError
    raw = path.read_bytes()
    if not raw:
        raise error(path, f"empty file (a {what} was expected)")
    try:
        img = Image.open(io.BytesIO(raw))
        img.load()
    except UnidentifiedImageError:
        raise error(path, f"not a readable {what} (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise error(path, f"unreadable or truncated {what} ({err})") from None
    return hashlib.sha256(raw).hexdigest(), img


def _check_image(path: Path) -> tuple[str, tuple[int, int]]:
    """sha256 and (width, height) of a fully decodable image, else a named error."""
    sha, img = _open_checked(path)
    return sha, img.size


MAX_MASK_RESIZE = 2.0  # a mask more than 2x off its scan on a side is not that scan's mask


def _check_mask(mask: Path, scan: Path, size: tuple[int, int], label: str, line: str, resize: bool) -> tuple[str, bool]:
    """sha256 of a usable mask and whether it must be resized; a mask of another size is refused
    unless ``resize`` (and always beyond :data:`MAX_MASK_RESIZE`), and a mask that contradicts
    the label is refused."""
    sha, img = _open_checked(mask, "mask")
    (mw, mh), (w, h) = img.size, size
    if (mw, mh) != (w, h):
        where = f"{mw}x{mh} px, its scan {scan.name} {w}x{h} px"
        if max(mw / w, w / mw, mh / h, h / mh) > MAX_MASK_RESIZE:
            raise MaskError(mask, f"{where}: more than {MAX_MASK_RESIZE:g}x off on a side, so not this scan's mask")
        if not resize:
            raise MaskError(
                mask, f"{where}: a mask must match its scan (resize_masks=True or --resize-masks resizes it)"
            )
    lesion = bool(binarise_mask(img).any())
    if lesion != (label != "normal"):
        raise MaskError(
            mask,
            f"no lesion pixel, but {line} labels the scan {label}"
            if not lesion
            else f"lesion pixels on a scan that {line} labels normal",
        )
    return sha, (mw, mh) != (w, h)


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
    images = _files(root / "images", "image")
    for p in images.values():
        if p.suffix.lower() not in IMAGE_EXTS:
            raise BusiDataError(p, f"not an image file (expected one of {', '.join(IMAGE_EXTS)})")
    masks_dir = root / "masks"
    masks = {p.stem: p for p in _files(masks_dir, "mask").values()} if masks_dir.is_dir() else {}
    rows = _label_rows(root, layout)
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
        sha, (w, h) = _check_image(path)
        mask = masks.get(path.stem)
        mask_sha, resized = "", False
        if mask is not None:
            mask_sha, resized = _check_mask(mask, path, (w, h), rec["label"], line, resize_masks)
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
