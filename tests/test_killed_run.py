"""An interrupted run resumes: notebook 03 and notebook 04 are killed (SIGKILL, the runner and its
kernel: what a power cut or an out-of-memory kill does) after their first model file is written,
then run again. What they compute comes out as the uninterrupted quick run's, file by file; no
half-written or temporary file is left; a model finished before the kill is not trained again.

Byte for byte: checkpoints, masks, probabilities, ONNX graphs, manifests. Wall-clock times are
logs of how long a run took, never inputs to a later step, and are left out of the comparison
where they are written: a checkpoint's ``.time.json``, a history's ``time`` column, and the
``seconds`` entries of a JSON summary or recipe. ``ood.npz`` is compared array by array (NumPy's zip stamps
the time of writing)."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from busi_utils.core.files import file_sha256

WALL_CLOCK_KEYS = ("seconds", "train_seconds", "seconds_per_epoch", "export_seconds")
NOTEBOOKS = {"03": "03_leakage_safe_masks", "04": "04_mask_aware_classifier"}


def _without_wall_clock(obj):
    if isinstance(obj, dict):
        return {k: _without_wall_clock(v) for k, v in obj.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(obj, list):
        return [_without_wall_clock(v) for v in obj]
    return obj


def _comparable(path: Path):
    """The file's bytes (their hash), or for the few files that log wall-clock time, their content
    without it (see the module docstring)."""
    if path.name.endswith(".time.json"):
        return "a log of wall-clock time"
    if path.suffix == ".json":
        return _without_wall_clock(json.loads(path.read_text()))
    if path.suffix == ".csv" and path.name.endswith(".history.csv"):
        return pd.read_csv(path).drop(columns="time", errors="ignore").to_csv(index=False)
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: z[k].tobytes() for k in z.files}
    return file_sha256(path)


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the runner and every process under it (the kernel runs in a session of its own)."""
    family = psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=60)
    psutil.wait_procs(family, timeout=60)


def _course(run: Path, number: str) -> list[str]:
    return [sys.executable, "-m", "busi_utils.course", "--profile", "quick", "--run-dir", str(run), "--only", number]


def _kill_after_first_model(run: Path, number: str, models: list[str], timeout: float = 900) -> dict[str, tuple]:
    """Start notebook ``number``, SIGKILL it once the first of ``models`` is on disk (and not all),
    and return ``{model: (mtime_ns, sha256)}`` of those finished by then."""
    process = subprocess.Popen(_course(run, number), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    try:
        while time.monotonic() - start < timeout:
            done = [m for m in models if (run / m).exists()]
            if done:
                break
            assert process.poll() is None, f"notebook {number} ended before writing a model: nothing to interrupt"
            time.sleep(0.05)
        else:
            pytest.fail(f"notebook {number} wrote no model in {timeout} s")
    finally:
        _kill_tree(process)
    assert len(done) < len(models), f"notebook {number} finished every model before the kill: widen the test"
    return {m: ((run / m).stat().st_mtime_ns, file_sha256(run / m)) for m in done}


@pytest.fixture(scope="module")
def reference(quick_paths):
    """The uninterrupted quick run (01-05 done) and what 03 and 04 wrote in it."""
    timing = json.loads(quick_paths.timing_json.read_text())
    written = {n: sorted(timing["products"][stem]) for n, stem in NOTEBOOKS.items()}
    assert all(written.values()), written
    return quick_paths.root, written


@pytest.mark.timeout(2400)  # a partial run, then a full one, of a quick-profile notebook
@pytest.mark.parametrize("number", ["03", "04"])
def test_a_killed_notebook_resumes_to_the_same_products(reference, tmp_path, number):
    ref_root, written = reference
    run = tmp_path / "run"
    shutil.copytree(ref_root, run)
    for later in (n for n in NOTEBOOKS if n >= number):  # as if the run had stopped before this notebook
        for rel in written[later]:
            (run / rel).unlink(missing_ok=True)
    models = [rel for rel in written[number] if rel.endswith(".pt")]
    assert len(models) >= 2, models
    finished = _kill_after_first_model(run, number, models)

    rerun = subprocess.run(_course(run, number), capture_output=True, text=True, timeout=1800)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    for m, (mtime, sha) in finished.items():  # finished before the kill: loaded, not trained again
        assert ((run / m).stat().st_mtime_ns, file_sha256(run / m)) == (mtime, sha), m
    missing = [rel for rel in written[number] if not (run / rel).exists()]
    assert not missing, f"missing after the resumed run: {missing}"
    differ = [rel for rel in written[number] if _comparable(run / rel) != _comparable(ref_root / rel)]
    assert not differ, f"differ from the uninterrupted run: {differ}"
    leftovers = [p for p in run.rglob("*") if p.name.startswith(".") and ".tmp" in p.name]
    assert not leftovers, leftovers


def test_the_comparison_sees_a_changed_weight(reference, tmp_path):
    """The control: one weight changed by one float step makes the checkpoints differ."""
    ref_root, written = reference
    model = ref_root / next(rel for rel in written["03"] if rel.endswith(".pt"))
    ckpt = torch.load(model, map_location="cpu", weights_only=True)
    key = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point())
    ckpt["state_dict"][key].view(-1)[0] = torch.nextafter(ckpt["state_dict"][key].view(-1)[0], torch.tensor(1e9))
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    changed = tmp_path / model.name
    changed.write_bytes(buffer.getvalue())
    assert _comparable(changed) != _comparable(model)
    buffer = io.BytesIO()  # the same content again, saved as save_checkpoint saves (through a file object)
    torch.save(torch.load(model, map_location="cpu", weights_only=True), buffer)
    changed.write_bytes(buffer.getvalue())
    assert _comparable(changed) == _comparable(model)
