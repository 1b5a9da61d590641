"""The checks behind :func:`busi_utils.data.external.build_external_index`: every file of an external
set read and refused, with a named error, before any model loads (the module docstring of
:mod:`busi_utils.data.external` lists what is refused and why)."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from busi_utils.core.config import CLASSES
from busi_utils.core.errors import BusiDataError, DuplicateEntryError, LabelsFileError, LayoutError, MaskError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LAYOUT_FILES = {"bus_uclm": "INFO.csv", "generic": "labels.csv"}


def read_label_table(path: Path) -> list[tuple[int, dict]]:
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
    if not text.strip():
        raise LabelsFileError(path, "empty file (only a byte-order mark or blank lines; expected a header line)")
    header = next(line for line in text.splitlines() if line.strip())
    if header != text.splitlines()[0]:
        raise LabelsFileError(path, "blank lines before the header: the first line must name the columns")
    reader = csv.DictReader(io.StringIO(text), delimiter=";" if header.count(";") > header.count(",") else ",")
    rows = []
    for row in reader:
        if None in row:
            raise LabelsFileError(path, f"line {reader.line_num}: more fields than the header has columns")
        rows.append((reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in row.items()}))
    if not rows:
        raise LabelsFileError(path, "a header but no rows: no image is labelled")
    return rows


def parse_label(value: str, where: Path, line: int) -> str:
    label = value.strip().lower()
    if label not in CLASSES:
        raise LabelsFileError(where, f"line {line}: unknown label {value!r} (expected {', '.join(CLASSES)})")
    return label


def is_yes(value: str) -> bool:
    return value.strip().lower() in ("yes", "y", "true", "1")


REQUIRED_COLUMNS = {"bus_uclm": ("Image", "Label"), "generic": ("image", "label")}


def label_rows(root: Path, layout: str) -> list[dict]:
    """``image`` (file name), ``label``, ``patient``, ``line`` and extra attributes, one per
    labelled image; a repeated row, image or stem is refused (:func:`refuse_repeats`)."""
    table = root / LAYOUT_FILES[layout]
    rows = read_label_table(table)
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
                "label": parse_label(row["Label"], table, n),
                "patient": Path(name).stem.split("_")[0],
                "doppler": is_yes(row.get("Doppler", "")),
                "marks": is_yes(row.get("Marks", "")),
            }
        else:
            name = row["image"]
            rec = {
                **{k: v for k, v in row.items() if k not in ("image", "label", "patient")},
                "image": name,
                "label": parse_label(row["label"], table, n),
                "patient": row.get("patient") or Path(name).stem,
            }
        if not name:
            raise LabelsFileError(table, f"line {n}: empty image name")
        out.append({**rec, "line": n, "_row": tuple(sorted(row.items()))})
    refuse_repeats(out, table)
    return out


def refuse_repeats(rows: list[dict], table: Path) -> None:
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


def listed_files(folder: Path, what: str) -> dict[str, Path]:
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


def open_checked(path: Path, what: str = "image") -> tuple[str, Image.Image]:
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
    except Image.DecompressionBombError:
        raise error(
            path, f"{what} too large to decode (its header claims over {Image.MAX_IMAGE_PIXELS * 2} pixels)"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise error(path, f"unreadable or truncated {what} ({err})") from None
    return hashlib.sha256(raw).hexdigest(), img


def check_image(path: Path) -> tuple[str, tuple[int, int]]:
    """sha256 and (width, height) of a fully decodable image, else a named error."""
    sha, img = open_checked(path)
    return sha, img.size


MAX_MASK_RESIZE = 2.0  # a mask more than 2x off its scan on a side is not that scan's mask


def check_mask(mask: Path, scan: Path, size: tuple[int, int], label: str, line: str, resize: bool) -> tuple[str, bool]:
    """sha256 of a usable mask and whether it must be resized; a mask of another size is refused
    unless ``resize`` (and always beyond :data:`MAX_MASK_RESIZE`), and a mask that contradicts
    the label is refused."""
    sha, img = open_checked(mask, "mask")
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
            f"no lesion pixel (lesion = any channel at least 128; a mask of 0/1 values?), but {line} labels the scan {label}"
            if not lesion
            else f"lesion pixels on a scan that {line} labels normal",
        )
    return sha, (mw, mh) != (w, h)


def binarise_mask(mask: Image.Image) -> np.ndarray:
    """Lesion where any channel is at least half bright: green, red or white masks alike."""
    arr = np.asarray(mask.convert("RGB") if mask.mode not in ("1", "L") else mask.convert("L"))
    return (arr.max(axis=2) if arr.ndim == 3 else arr) >= 128
