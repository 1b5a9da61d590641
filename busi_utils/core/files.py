"""Writing files so that an interrupted run never leaves half of one.

Every file the course writes goes through :func:`atomic_path`: write to a hidden temporary
name in the same folder, then ``os.replace`` it onto the real name (atomic on one file
system). A later run either finds the whole file or none, so resuming can trust what exists.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from busi_utils.core.errors import OutputError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it
    is removed. Works for files and for folders (a folder replaces only a missing one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def check_writable(path: str | os.PathLike, folder: bool = False) -> Path:
    """Refuse, before any work is done, an output that cannot be written: the file ``path`` (or
    the folder, when ``folder``) is created as needed, and a probe file written and removed in
    it. Raises :class:`~busi_utils.core.errors.OutputError` naming the path and the reason."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise OutputError(
            f"{path}: exists and is {'not ' if folder else ''}a folder ({'a folder' if folder else 'a file'} was expected)"
        )
    where = path if folder else path.parent
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe = where / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"{path}: cannot be written ({err.strerror or err})") from None
    return path


_TEMP_NAME = re.compile(r"\..+\.tmp(\d+)(\.[A-Za-z0-9]+)?")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(root: str | os.PathLike) -> list[Path]:
    """Remove what :func:`atomic_path` left behind when its process was killed (SIGKILL, power
    loss: no ``finally`` runs): temporary files and folders under ``root`` whose writer is no
    longer running. A live writer's are kept. Returns what was removed."""
    removed = []
    for path in sorted(Path(root).rglob(".*.tmp*")):
        match = _TEMP_NAME.fullmatch(path.name)
        if match and not _alive(int(match.group(1))) and path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def json_safe(obj: Any) -> Any:
    """``obj`` with NumPy scalars made Python numbers and NaN / infinity made ``None``: strict
    JSON (``jq``, JavaScript, ``json.loads`` with ``parse_constant``) has no NaN literal."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # a NumPy scalar
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON (undefined numbers become ``null``), atomically."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else default


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes: how an export knows which model files it was made from."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


WALL_CLOCK_KEYS = ("train_seconds", "seconds_per_epoch")  # how long training took: a log, not part of the model


def timing_path(path: str | os.PathLike) -> Path:
    """Where a checkpoint's wall-clock times live: ``<name>.time.json`` beside ``<name>.pt``."""
    return Path(path).with_suffix(".time.json")


def save_checkpoint(path: str | os.PathLike, state_dict: dict, info: dict) -> None:
    """Weights plus the recipe that rebuilds and audits the model, written atomically:
    a portable export (no pickled code), so loading needs only this package.

    The training times in ``info`` go to a file of their own (:func:`timing_path`), written first,
    so that the checkpoint's bytes depend on the model alone: the same inputs and seed give the
    same file (and the same fingerprint in an export), in a resumed run as in an uninterrupted one."""
    import torch  # light CLI path: loaded when used

    times = {k: info[k] for k in WALL_CLOCK_KEYS if k in info}
    if times:
        atomic_write_json(timing_path(path), times)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: torch names the archive's
        # root after a path it is given, and the temporary name carries the process id
        torch.save({"state_dict": state_dict, "info": {k: v for k, v in info.items() if k not in times}}, fh)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(state_dict, info)`` of a checkpoint written by :func:`save_checkpoint`, its training
    times merged back into ``info`` when they were recorded."""
    import torch  # light CLI path: loaded when used

    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    return ckpt["state_dict"], {**ckpt["info"], **read_json(timing_path(path), {})}


def cached_csv(path: str | os.PathLike, make):
    """Return the DataFrame saved at ``path``, or make it, save it atomically and return it:
    the resume-don't-recompute rule for every table a notebook derives."""
    import pandas as pd  # light CLI path: loaded when used

    path = Path(path)
    if path.exists():
        return pd.read_csv(path, keep_default_na=False)
    df = make()
    atomic_write_text(path, df.to_csv(index=False))
    return df


def cached_json(path: str | os.PathLike, key: dict, make) -> Any:
    """Return the result saved at ``path`` when it was made from the same ``key`` (the inputs
    it came from: ids, recipe, seed...), else make it, save it with its key atomically and
    return it. A re-run of a chapter then reads what a finished run already computed, and
    any change of input recomputes instead of serving a stale answer."""
    path = Path(path)
    key = json_safe(key)
    saved = read_json(path)
    if isinstance(saved, dict) and saved.get("key") == key:
        return saved["result"]
    result = make()
    atomic_write_json(path, {"key": key, "result": result})
    return result
