"""One number per processor: pin the CPU code paths whose float rounding changes trained weights.

The same code and seed gave test accuracy 0.822 on one machine of this kind and 0.842 on
another. Training is deterministic on *one* machine (``tests/test_reproducibility.py``); across
machines the libraries pick other instructions and another split of the work, each rounding
floats differently, and the differences compound over epochs. Measured on a small CNN: the
weights change with oneDNN's instruction set (AVX2 vs SSE4.1), with ATen's CPU capability
(``avx2`` vs ``default``) and with the thread count (2 vs 4); 1 or 2 threads agree.

**Reproducible mode** (on by default; ``BUSI_REPRODUCIBLE=0`` turns it off) pins all of them
to what every x86-64 laptop of the last decade has, before torch loads:

* ``ONEDNN_MAX_CPU_ISA=AVX2`` (convolutions, oneDNN), ``ATEN_CPU_CAPABILITY=avx2`` (torch's
  own vectorised kernels), ``MKL_CBWR=AVX2`` (MKL's matrix products: one code path);
* ``OMP_NUM_THREADS=2`` and ``MKL_NUM_THREADS=2``: two threads, whatever the cores.

A machine with AVX-512 then computes what an AVX2 machine of its kind computes; a machine with
more cores gives up speed for the book's numbers. *Of its kind*: an AMD EPYC and an Intel Xeon,
both pinned, trained other weights; whether vendor or model makes the difference is not known
yet (:func:`processor`; ``tests/golden_hashes.json`` keeps one hash per recorded processor).

The processor's AVX2 is read from Linux's ``/proc/cpuinfo``: elsewhere (macOS, Windows, Arm) nothing is pinned, and :func:`describe` says
so. What it does not pin: NumPy/SciPy's OpenBLAS kernel (:func:`describe` records it), the GPU,
and other library versions (``requirements.txt`` pins those). Set it before torch is imported: :mod:`busi_utils` does so when imported, the course
runner for every notebook's kernel, the test session in ``tests/conftest.py``, and ``make lab``
for JupyterLab's kernels (``python -m busi_utils.core.pinned COMMAND ...`` runs any command with
the pins set). A kernel that imports torch before ``busi_utils`` (chapter 2 imports fastai
first) gets the pins only from one of those; :func:`describe` reports what it really got.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import MutableMapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

__all__ = [
    "ENV_SWITCH",
    "PINS",
    "THREADS",
    "describe",
    "enabled",
    "pin_environment",
    "processor",
    "supports_pinned_isa",
]

_pinned_after_torch = False  # set when the pins came after torch was imported (too late for the ISA)

ENV_SWITCH = "BUSI_REPRODUCIBLE"
THREADS = 2
PINS = {
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",  # oneDNN's older name for the same switch
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
}
ISA_FLAGS = ("avx2", "fma")  # what the pinned code paths need from the processor


def enabled(environ: MutableMapping[str, str] | None = None) -> bool:
    """True unless ``BUSI_REPRODUCIBLE`` is ``0`` / ``false`` / ``no`` / ``off``."""
    value = (environ if environ is not None else os.environ).get(ENV_SWITCH, "1")
    return value.strip().lower() not in ("0", "false", "no", "off")


def _cpuinfo() -> dict[str, str]:
    """The first value of each field of Linux's ``/proc/cpuinfo`` (the first processor; empty
    elsewhere): the one reader behind the flags, the model name and :func:`processor`."""
    found: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            found.setdefault(key, value)
    except OSError:
        pass
    return found


def _cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def supports_pinned_isa() -> bool:
    """Whether this processor has AVX2 (x86-64 only): without it the pins cannot hold, and a
    run reproduces nothing of the book's numbers."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    flags = _cpu_flags()
    return all(f in flags for f in ISA_FLAGS) if flags else False


def pin_environment(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the pins in ``environ`` (default ``os.environ``) when the mode is on and the processor
    supports them, over any value set before (a global ``OMP_NUM_THREADS=1`` would silently give
    other numbers; to choose your own, turn the mode off). Returns the pins set. Has no effect on
    a torch that is already imported (the thread count aside): call it first."""
    environ = os.environ if environ is None else environ
    if not enabled(environ) or not supports_pinned_isa():
        return {}
    already = environ is os.environ and all(environ.get(k) == v for k, v in PINS.items())
    environ.update(PINS)
    if environ is os.environ and "torch" in sys.modules and not already:  # too late for the ISA; threads follow
        global _pinned_after_torch
        _pinned_after_torch = True
        sys.modules["torch"].set_num_threads(THREADS)
    return dict(PINS)


PROCESSOR_FIELDS = ("vendor_id", "cpu family", "model")


def processor() -> dict[str, str]:
    """The processor's vendor, family and model as Linux names them (empty elsewhere). Reproducible
    mode is measured per processor: an Intel Xeon and an AMD EPYC, both pinned to AVX2 and two
    threads, trained other weights (``tests/golden_hashes.json``); the guess, untested, is that
    oneDNN and MKL still tune their kernels to the processor they find."""
    info = _cpuinfo()
    return {k: info[k] for k in PROCESSOR_FIELDS if k in info}


def _cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def describe() -> dict:
    """What a number needs beside it to be compared across machines: the mode, the CPU, the
    instruction set torch uses, threads, the BLAS kernels, and the versions that compute."""
    import torch  # loaded where used: callers have torch already

    try:
        from threadpoolctl import threadpool_info  # scikit-learn's: loaded where used, like torch

        blas = sorted({f"{p.get('internal_api')}:{p.get('architecture')}" for p in threadpool_info()})
    except ImportError:  # pragma: no cover - scikit-learn brings threadpoolctl
        blas = []
    isa, threads = torch.backends.cpu.get_cpu_capability(), torch.get_num_threads()
    return {
        # on only when the pins are what torch really uses: set before it loaded, AVX2, two threads
        "reproducible": enabled()
        and supports_pinned_isa()
        and not _pinned_after_torch
        and isa == "AVX2"
        and threads == THREADS,
        "cpu": _cpu_model(),
        "processor": processor(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "isa_in_use": isa,
        "threads": threads,
        "pins": {k: os.environ.get(k) for k in PINS if os.environ.get(k)},
        "pinned_after_torch": _pinned_after_torch,
        "blas": blas,
        "versions": {
            p: _version(p)
            for p in ("torch", "torchvision", "fastai", "timm", "numpy", "scipy", "scikit-learn", "onnxruntime")
        },
        "python": platform.python_version(),
    }
