"""Where BUSI comes from: a folder or the Kaggle zip given by the user or ``BUSI_ROOT``, the
repository's ``data/`` folder, a kagglehub download (optional, online only), or, loudly, a
seeded synthetic stand-in. A zip is extracted once into the cache, its member paths checked.

The dataset folder is only ever read. Anything derived (an extracted zip, resized copies) goes
to :func:`busi_utils.core.config.cache_dir`."""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

from busi_utils.core.config import CLASSES, cache_dir, repo_root, shown_path
from busi_utils.core.errors import BusiDataError, DataNotFoundError
from busi_utils.core.files import atomic_path, atomic_write_json, file_sha256, read_json

DATASET_FOLDER = "Dataset_BUSI_with_GT"


KAGGLE_DATASET = "aryashah2k/breast-ultrasound-images-dataset"


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
        origin = shown_path(self.origin) if Path(self.origin).exists() else self.origin
        return f"Data: **{self.kind}** `{origin}` → `{shown_path(self.root)}`"

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
        from busi_utils.data.synthetic import make_synthetic_busi  # light CLI path: loaded when used

        root = make_synthetic_busi(cache_dir() / "synthetic" / f"seed{synthetic_seed}", seed=synthetic_seed)
        warnings.warn("BUSI not found; using SYNTHETIC data. Tried: " + "; ".join(tried), stacklevel=2)
        return DataSource(root, "synthetic", "generated by busi_utils.data.synthetic")
    raise DataNotFoundError("BUSI dataset not found. Tried:\n  - " + "\n  - ".join(tried))


def read_source(path: os.PathLike | str) -> DataSource:
    """The data source notebook 01 recorded (so later notebooks show the same banner)."""
    info = read_json(Path(path))
    if info is None:
        raise FileNotFoundError(f"{path}: missing; run notebook 01 for this run folder first")
    return DataSource(Path(info["root"]), info["kind"], info["origin"])
