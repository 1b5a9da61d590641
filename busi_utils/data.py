"""Finding, validating, indexing and loading BUSI.

BUSI as Kaggle ships it::

    Dataset_BUSI_with_GT/{benign,malignant,normal}/
        benign (1).png  benign (1)_mask.png  [benign (1)_mask_1.png ...]

The dataset folder is only ever read. Anything derived (an extracted zip, resized
copies) goes to :func:`busi_utils.config.cache_dir`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from .config import CLASSES, cache_dir, repo_root
from .errors import BusiDataError, DataNotFoundError
from .files import atomic_path, atomic_write_json, atomic_write_text, file_sha256, read_json

DATASET_FOLDER = "Dataset_BUSI_with_GT"
KAGGLE_DATASET = "aryashah2k/breast-ultrasound-images-dataset"
MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<extra>\d+))?\.png$", re.IGNORECASE)
#: a pixel whose RGB channels differ by more than this is coloured (a mark, not tissue)
COLOUR_DELTA = 40
#: an image with more coloured pixels than this carries colour marks
COLOUR_MIN_PIXELS = 20


# --------------------------------------------------------------------------- finding


@dataclass(frozen=True)
class DataSource:
    """Where the images come from. ``kind`` is folder, zip, kaggle or synthetic."""

    root: Path
    kind: str
    origin: str

    @property
    def synthetic(self) -> bool:
        return self.kind == "synthetic"

    def banner(self) -> str:
        """Markdown a notebook displays first, so nobody mistakes synthetic numbers for BUSI's."""
        if self.synthetic:
            return (
                "<div style='border:4px solid #c00;padding:8px;font-size:1.2em'>"
                "<b>⚠ SYNTHETIC DATA.</b> The real BUSI dataset was not found, so this run uses "
                "generated BUSI-like images. Every number and picture below is a software "
                "test, <b>not a result on breast ultrasound</b>. Set <code>BUSI_ROOT</code> "
                "to the Kaggle zip or folder (see README) and run again.</div>"
            )
        return f"Data: **{self.kind}** `{self.origin}` → `{self.root}`"

    def to_json(self) -> dict:
        return {"root": str(self.root), "kind": self.kind, "origin": self.origin}


def find_dataset_dir(path: os.PathLike | str) -> Path:
    """Return the folder that holds ``benign/ malignant/ normal/``: ``path`` itself or its
    ``Dataset_BUSI_with_GT`` child (Kaggle downloads add one level)."""
    path = Path(path)
    if not path.is_dir():
        raise BusiDataError(path, "is not a folder")
    for candidate in (path, path / DATASET_FOLDER):
        if candidate.is_dir() and any((candidate / c).is_dir() for c in CLASSES):
            return candidate
    nested = sorted(path.glob(f"*/{DATASET_FOLDER}"))
    if nested:
        return nested[0]
    raise BusiDataError(
        path,
        f"wrongly laid out: expected class folders benign/, malignant/, normal/ (directly or inside {DATASET_FOLDER}/)",
    )


def extract_zip(zip_path: os.PathLike | str, dest_root: Path | None = None, locate=None) -> Path:
    """Extract a dataset zip once into the cache and return its dataset folder (found by
    ``locate``, default :func:`find_dataset_dir`, BUSI's layout).

    The extraction goes to a temporary folder first and is renamed into place only
    when complete, with a marker holding the zip's sha256 and file count; zipfile
    checks every member's CRC while reading, so a damaged zip fails here, loudly.
    """
    zip_path = Path(zip_path)
    locate = locate or find_dataset_dir
    if not zipfile.is_zipfile(zip_path):
        raise BusiDataError(zip_path, "is not a readable zip file")
    stat = zip_path.stat()
    key = hashlib.sha1(f"{zip_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = (dest_root or cache_dir() / "extracted") / key
    marker = dest / ".complete.json"
    if marker.exists():
        info = read_json(marker)
        n_files = sum(1 for p in dest.rglob("*") if p.is_file() and p.name != marker.name)
        if n_files == info.get("n_files"):
            return locate(dest)
        shutil.rmtree(dest)  # incomplete or tampered: extract again
    shutil.rmtree(dest, ignore_errors=True)
    with atomic_path(dest) as tmp:  # the folder appears complete or not at all
        try:
            with zipfile.ZipFile(zip_path) as zf:
                members = [m for m in zf.infolist() if not m.is_dir()]
                for m in members:
                    if m.filename.startswith("/") or ".." in Path(m.filename).parts:
                        raise BusiDataError(zip_path, f"unsafe member path {m.filename!r}")
                zf.extractall(tmp)
        except zipfile.BadZipFile as err:
            raise BusiDataError(zip_path, f"damaged zip ({err})") from err
        atomic_write_json(
            tmp / ".complete.json", {"sha256": file_sha256(zip_path), "n_files": len(members), "zip": str(zip_path)}
        )
    return locate(dest)


def _from_path(path: Path, kind_if_folder: str = "folder") -> DataSource:
    if path.is_file() and path.suffix.lower() == ".zip":
        return DataSource(extract_zip(path), "zip", str(path))
    if path.is_dir():
        return DataSource(find_dataset_dir(path), kind_if_folder, str(path))
    raise BusiDataError(path, "does not exist" if not path.exists() else "is neither a folder nor a .zip")


def download_with_kagglehub() -> Path:
    """Fetch BUSI from Kaggle with ``kagglehub`` (needs network; credentials optional for
    this public dataset). Returns the downloaded folder."""
    import kagglehub  # optional dependency: pip install kagglehub

    return Path(kagglehub.dataset_download(KAGGLE_DATASET))


def resolve_data(
    busi_root: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    allow_download: bool | None = None,
    allow_synthetic: bool = True,
    synthetic_seed: int = 0,
) -> DataSource:
    """Find the dataset, in this order, and say which one was used.

    1. ``busi_root`` or else ``$BUSI_ROOT``: the extracted folder or the Kaggle zip. When
       given, it must work: a wrong path is an error, never a silent fallback.
    2. ``data/`` in the checkout: a ``Dataset_BUSI_with_GT`` folder or a ``*.zip``.
    3. ``kagglehub`` download, unless ``allow_download`` is False or ``$BUSI_OFFLINE`` is set.
    4. A synthetic BUSI-like dataset (``allow_synthetic``), flagged as such everywhere.
    """
    explicit = busi_root or os.environ.get("BUSI_ROOT")
    if explicit:
        return _from_path(Path(explicit).expanduser())
    tried: list[str] = ["BUSI_ROOT: not set"]
    data_dir = Path(data_dir) if data_dir else repo_root() / "data"
    zips = [z for z in sorted(data_dir.glob("*.zip")) if not z.name.upper().startswith("BUS-UCLM")]  # chapter 7's set
    for candidate in [data_dir / DATASET_FOLDER, *zips]:
        if candidate.exists():
            try:
                return _from_path(candidate)
            except BusiDataError as err:
                tried.append(f"{candidate}: {err.problem}")
    if len(tried) == 1:
        tried.append(f"{data_dir}: no {DATASET_FOLDER}/ folder and no .zip")
    if allow_download is None:
        allow_download = not os.environ.get("BUSI_OFFLINE")
    if allow_download:
        try:
            return DataSource(find_dataset_dir(download_with_kagglehub()), "kaggle", KAGGLE_DATASET)
        except Exception as err:  # no network, no kagglehub, no credentials...
            tried.append(f"kagglehub {KAGGLE_DATASET}: {type(err).__name__}: {err}"[:300])
    else:
        tried.append("kagglehub download: disabled (offline)")
    if allow_synthetic:
        from .synthetic import make_synthetic_busi

        root = make_synthetic_busi(cache_dir() / "synthetic" / f"seed{synthetic_seed}", seed=synthetic_seed)
        warnings.warn("BUSI not found; using SYNTHETIC data. Tried: " + "; ".join(tried), stacklevel=2)
        return DataSource(root, "synthetic", "generated by busi_utils.synthetic")
    raise DataNotFoundError("BUSI dataset not found. Tried:\n  - " + "\n  - ".join(tried))


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
    from tqdm.auto import tqdm

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


def read_source(path: os.PathLike | str) -> DataSource:
    """The data source notebook 01 recorded (so later notebooks show the same banner)."""
    info = read_json(Path(path))
    if info is None:
        raise FileNotFoundError(f"{path}: missing; run notebook 01 for this run folder first")
    return DataSource(Path(info["root"]), info["kind"], info["origin"])


def aspect_ratios(index: pd.DataFrame) -> dict[str, float]:
    """Height / width of each indexed image as stored: the shape descriptors restore the
    orientation that the square resize distorted (:func:`busi_utils.shape.shape_features`)."""
    return dict(zip(index["image_id"], index["height"] / index["width"]))
