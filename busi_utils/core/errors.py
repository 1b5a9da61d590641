"""Every error the course raises on purpose, in one place.

Each names the file (or folder) and the problem, so a user can act on the message alone.
The command-line tools map them to exit codes: bad input 2, missing run folder 3.
"""

from __future__ import annotations

import os
from pathlib import Path


class BusiDataError(ValueError):
    """Bad input data: the message names the file (or folder) and the problem."""

    def __init__(self, path: os.PathLike | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class LayoutError(BusiDataError):
    """A data set's folders are not laid out as expected (say, a subfolder inside ``images/``)."""


class LabelsFileError(BusiDataError):
    """The labels table cannot be read: empty, header only, not UTF-8, or a column missing.
    The message names the file and, where it applies, the line."""


class DuplicateEntryError(BusiDataError):
    """Something would be counted twice: a repeated row, an image listed twice, or one stem in
    two files (``scan.png`` and ``scan.jpg``), whose masks and outputs would be confused."""


class MaskError(BusiDataError):
    """A mask that cannot be scored against its scan: unreadable, empty file, another size
    (resized only where the data set's publishers say so), or contradicting the label (a lesion
    scan with no lesion pixel, a normal scan with one)."""


class DataNotFoundError(FileNotFoundError):
    """No dataset could be found, fetched or generated; the message lists what was tried."""


class InputError(ValueError):
    """An image that cannot be analysed (empty, truncated, not an image, too small, too large)."""


class OutputError(OSError):
    """An output folder or file that cannot be written (named before any work is done)."""


class RunFolderError(FileNotFoundError):
    """The run folder is missing, or lacks a file that an earlier notebook writes."""


class SchemaError(ValueError):
    """A run-folder file does not have the shape :mod:`busi_utils.core.runfolder` defines."""


class LeakageError(RuntimeError):
    """A duplicate group crosses a split or fold, or a model would see an image it predicts.

    A ``RuntimeError``, not an ``AssertionError``: the check must run under ``python -O`` too,
    and a test's ``pytest.raises(AssertionError)`` must not catch it by accident.
    """


class PretrainedWeightsError(RuntimeError):
    """The pinned weights package is missing, or its tensors do not fit the network."""


class SiteError(ValueError):
    """A new site's adaptation cannot be done as asked: no scans, a labelled set with one class,
    more patients asked than the pool holds, a site fitted for another run, a site that exists."""
