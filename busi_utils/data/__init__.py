"""Chapter 1's data journey: finding BUSI (:mod:`~busi_utils.data.sources`), checking, indexing
and loading it (:mod:`~busi_utils.data.busi`), a seeded stand-in (``synthetic``), duplicates
(``dedup``), the grouped split (``splits``), the resized-array cache (``preprocess``) and the
external sets (``external``).

``busi_utils.data`` itself gathers the names of ``sources`` and ``busi`` (``data.build_index``,
``data.resolve_data``, ``data.load_image`` ...), the ones every chapter uses.
"""

from busi_utils.core.errors import BusiDataError, DataNotFoundError
from busi_utils.data.busi import (
    COLOUR_DELTA,
    COLOUR_MIN_PIXELS,
    MASK_RE,
    aspect_ratios,
    build_index,
    colour_pixel_count,
    dataset_hash,
    list_files,
    load_image,
    load_mask,
    load_or_build_index,
    load_pair,
    open_png,
    read_index,
)
from busi_utils.data.sources import (
    DATASET_FOLDER,
    KAGGLE_DATASET,
    DataSource,
    download_with_kagglehub,
    extract_zip,
    find_dataset_dir,
    read_source,
    resolve_data,
)

__all__ = [
    "aspect_ratios",
    "build_index",
    "BusiDataError",
    "COLOUR_DELTA",
    "COLOUR_MIN_PIXELS",
    "colour_pixel_count",
    "DataNotFoundError",
    "DATASET_FOLDER",
    "dataset_hash",
    "DataSource",
    "download_with_kagglehub",
    "extract_zip",
    "find_dataset_dir",
    "KAGGLE_DATASET",
    "list_files",
    "load_image",
    "load_mask",
    "load_or_build_index",
    "load_pair",
    "MASK_RE",
    "open_png",
    "read_index",
    "read_source",
    "resolve_data",
]
