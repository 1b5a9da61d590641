"""The command line for users: segment and classify images with a trained run folder.

    python -m busi_utils.serve.infer --image scan.png [--run runs/cpu] [--out DIR] [--json]
    python -m busi_utils.serve.infer --folder scans/ [--run runs/cpu] [--out DIR] [--json]

Everything a user can get wrong is refused before a model loads, each with one line naming the
file and the problem: an image that cannot be analysed (empty, not an image, truncated, too small,
too large), a threshold outside (0, 1), an output folder that cannot be written, two inputs that
would write the same outputs (``scan.png`` and ``scan.jpg``). This module imports no model code
(no torch, onnxruntime, SciPy or pandas) until then, so a bad file is refused in a fraction of a
second (``benchmarks/infer.csv``).
The models are the :class:`~busi_utils.serve.predictor.Predictor`'s (re-exported here). Exit codes:
0 done, 2 bad input or output, 3 missing or incomplete run folder. Research and teaching only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from busi_utils import DISCLAIMER
from busi_utils.core.config import CLASSES
from busi_utils.core.errors import InputError, OutputError, RunFolderError, SiteError
from busi_utils.core.files import atomic_path, check_writable, json_safe
from busi_utils.core.images import to_grayscale
from busi_utils.core.runfolder import default_run
from busi_utils.serve.prediction import BACKENDS, Prediction

__all__ = [  # noqa: F822  (Predictor: loaded on first use, see __getattr__)
    "Predictor",
    "Prediction",
    "InputError",
    "OutputError",
    "RunFolderError",
    "main",
]


def __getattr__(name: str):
    """``Predictor`` and ``export_status`` load with the models' modules, when first asked for:
    the command line refuses bad input before that."""
    if name == "Predictor":
        from busi_utils.serve.predictor import Predictor  # the models' modules: loaded on first use

        return Predictor
    if name == "export_status":
        from busi_utils.core.runfolder import export_status  # re-exported for older callers

        return export_status
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def write_outputs(pred: Prediction, stem: str, out_dir: Path) -> list[Path]:
    """Mask and overlay PNGs, each written atomically (never half a file)."""
    written = []
    for suffix, arr in (("mask", pred.mask.astype(np.uint8) * 255), ("overlay", pred.overlay())):
        path = Path(out_dir) / f"{stem}_{suffix}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG", compress_level=1)  # fast; the files are small anyway
        written.append(path)
    return written


def _flags(r: dict) -> str:
    flags = (["NOT LIKE THE TRAINING SCANS: unreliable"] if r["out_of_distribution"] else []) + (
        ["uncertain: refer"] if r["uncertain"] else []
    )
    return "; ".join(flags) or "-"


def _threshold(text: str) -> float:
    """A lesion probability strictly between 0 and 1 (``nan``, ``2`` or ``0`` would paint all or nothing)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and 0 < value < 1):
        raise argparse.ArgumentTypeError(f"{text}: must be a probability strictly between 0 and 1")
    return value


def input_files(image: str | None, folder: str | None) -> list[Path]:
    """The files to analyse: the one ``image``, or every file of ``folder`` (not recursive, hidden
    files aside)."""
    if image:
        return [Path(image)]
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    return sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))


def refuse_clashes(files: list[Path]) -> None:
    """Two inputs whose outputs would collide (one stem, two formats; ``Scan.png`` and
    ``scan.jpg`` collide too where file names ignore case) are refused by name."""
    seen: dict[str, Path] = {}
    for path in files:
        key = path.stem.casefold()
        if key in seen:
            raise InputError(
                f"{path}: would write the same outputs as {seen[key].name} ({path.stem}_mask.png); rename one"
            )
        seen[key] = path


def refuse_unreadable(files: list[Path], workers: int) -> tuple[list[Path], list[str]]:
    """Decode every file before any model loads: ``(the files that can be analysed, one message
    per file that cannot)``."""

    def check(path: Path) -> str | None:
        try:
            to_grayscale(path)
        except InputError as err:
            return str(err)
        except OSError as err:  # unreadable: permissions, a file that vanished
            return f"{path}: cannot be read ({err.strerror or err})"
        return None

    with ThreadPoolExecutor(workers) as pool:  # Pillow decodes without the GIL
        problems = list(pool.map(check, files))
    return [f for f, p in zip(files, problems) if p is None], [p for p in problems if p is not None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m busi_utils.serve.infer",
        description="Segment and classify breast-ultrasound images with a trained run folder. " + DISCLAIMER,
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--image", help="one image file (PNG, JPEG, BMP, TIFF; RGB, RGBA, palette, 8/16-bit gray; 64-5000 px)"
    )
    src.add_argument("--folder", help="every image file in this folder (not recursive), with a progress bar")
    ap.add_argument("--run", help="run folder with trained models (default: runs/cpu, else runs/gpu, else runs/quick)")
    ap.add_argument(
        "--out",
        default="predictions",
        help="where <name>_mask.png and <name>_overlay.png are written (default: ./predictions)",
    )
    ap.add_argument(
        "--threshold",
        type=_threshold,
        default=0.5,
        help="lesion probability above which a pixel is lesion, strictly between 0 and 1 (default 0.5)",
    )
    ap.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="onnx (fast start), torch, or auto: onnx when the run has a current export",
    )
    ap.add_argument("--json", action="store_true", help="print strict JSON (one object per image) instead of a table")
    ap.add_argument(
        "--site", default=None, help="answer as an adapted site of the run (python -m busi_utils.serve.adapt)"
    )
    args = ap.parse_args(argv)
    workers = 1 if args.image else min(4, os.cpu_count() or 1)
    try:  # everything a user can get wrong, before a model loads
        files, failed = refuse_unreadable(input_files(args.image, args.folder), workers)
        if args.image and failed:
            raise InputError(failed[0])
        refuse_clashes(files)  # among the files that will write outputs
        check_writable(args.out, folder=True)
    except (InputError, OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = []
    if files:
        from busi_utils.serve.predictor import Predictor  # the models' modules, after the checks

        try:
            predictor = Predictor(
                args.run or default_run(),
                args.backend,
                notice=lambda msg: print(msg, file=sys.stderr),
                threads=1 if workers > 1 else 0,
                site=args.site,
            )
        except SiteError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except RunFolderError as err:
            print(f"error: {err}", file=sys.stderr)
            return 3

        def analyse(path: Path) -> dict | str:
            try:
                pred = predictor.predict(path, args.threshold)
            except InputError as err:  # a file changed since it was checked
                return str(err)
            write_outputs(pred, path.stem, Path(args.out))
            return {"image": str(path), **pred.to_json()}

        with ThreadPoolExecutor(workers) as pool:  # decoding, inference and PNG writing release the GIL
            outcomes = list(_progress(pool.map(analyse, files), bool(args.folder), len(files)))
        results = [o for o in outcomes if isinstance(o, dict)]
        failed += [o for o in outcomes if isinstance(o, str)]
    if args.image and failed:
        print(f"error: {failed[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json_safe(results if args.folder else results[0]), indent=1, allow_nan=False))
    elif results:
        print(f"{'image':40s} {'label':10s} " + " ".join(f"{c:>9s}" for c in CLASSES) + "  flags")
        for r in results:
            print(
                f"{Path(r['image']).name[:40]:40s} {r['label']:10s} "
                + " ".join(f"{r['probabilities'][c]:9.3f}" for c in CLASSES)
                + f"  {_flags(r)}"
            )
        print(f"outputs in {Path(args.out).resolve()} | {DISCLAIMER}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} file(s) could not be analysed:", file=sys.stderr)
        for msg in failed:
            print(f"  {msg}", file=sys.stderr)
        return 2
    return 0


def _progress(items, show: bool, total: int):
    if not show:
        return items
    from tqdm import tqdm  # light CLI path: loaded when used

    return tqdm(items, desc="images", total=total, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
