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


class DataNotFoundError(FileNotFoundError):
    """No dataset could be found, fetched or generated; the message lists what was tried."""


class InputError(ValueError):
    """An image that cannot be analysed (empty, truncated, not an image, too small, too large)."""


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
