"""Inference speed as a user meets it: one image with the command line (process start to
exit), a folder of 100 test images, for the torch and the ONNX backend; and how fast six bad
files are refused (process start to exit, before any model loads).

    python scripts/benchmark_infer.py [--run runs/cpu] [--repeats 3] [--refusals-only]

Rows go to ``benchmarks/infer.csv`` with the machine's speed (targets on 2 cores: one image
at most 2 s, a folder at most 60 ms per image, a bad file refused within 0.5 s). A measurement,
not a test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from busi_utils import data
from busi_utils.core import runfolder
from busi_utils.data.synthetic import png_claiming
from busi_utils.evaluation import benchmark

REFUSAL_TARGET_S = 0.5


def timed(cmd: list[str], expect: int = 0) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != expect:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}, expected {expect}: {done.stderr[-500:]}")
    return seconds


def bad_files(folder: Path) -> dict[str, Path]:
    """Six files the command line must refuse, by kind."""
    scan = folder / "scan.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (400, 500), dtype=np.uint8)).save(scan)
    made = {
        "empty": b"",
        "text_as_png": b"this is not an image\n",
        "truncated": scan.read_bytes()[:2000],
        "10px": None,
        "12000x9000_header": png_claiming(12000, 9000),
        "20000px_bomb": png_claiming(20000, 20000),
    }
    out = {}
    for kind, content in made.items():
        path = folder / f"{kind}.png"
        if content is None:
            Image.new("L", (10, 10)).save(path)
        else:
            path.write_bytes(content)
        out[kind] = path
    return out


def refusal_rows(folder: Path, repeats: int, meta: dict) -> list[dict]:
    """Process start to exit for each bad file (median of ``repeats``), exit code 2 required."""
    rows = []
    for kind, path in bad_files(folder).items():
        cmd = [sys.executable, "-m", "busi_utils.serve.infer", "--image", str(path), "--out", str(folder / "out")]
        seconds = statistics.median(timed(cmd, expect=2) for _ in range(repeats))
        rows.append({"backend": f"refusal:{kind}", "image_cli_s": round(seconds, 3), **meta})
        verdict = "within" if seconds <= REFUSAL_TARGET_S else "OVER"
        print(f"refused {kind:18s} in {seconds:.3f} s ({verdict} {REFUSAL_TARGET_S} s; calib {meta['calib_ms']} ms)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(runfolder.default_run()))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--refusals-only", action="store_true", help="time the six bad files only (no run folder needed)")
    args = ap.parse_args()
    if args.refusals_only:
        with tempfile.TemporaryDirectory() as tmp:
            rows = refusal_rows(Path(tmp), args.repeats, {"run": "-", **benchmark.machine_info()})
        benchmark.append_rows(benchmark.benchmarks_dir() / "infer.csv", rows, ["backend", "run"])
        return
    paths = runfolder.RunPaths(Path(args.run).resolve())
    index = data.read_index(paths.index_csv).set_index("image_id")
    ids = paths.read_split().query("split == 'test'")["image_id"].head(100)
    meta = {"run": paths.root.name, **benchmark.machine_info()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "scans"
        folder.mkdir()
        for i in ids:
            shutil.copy(index.loc[i, "image_path"], folder / f"{i}.png")
        one = str(next(folder.iterdir()))
        for backend in ("torch", "onnx"):
            base = [
                sys.executable,
                "-m",
                "busi_utils.serve.infer",
                "--run",
                str(paths.root),
                "--backend",
                backend,
                "--out",
                tmp,
            ]
            image_s = statistics.median(timed(base + ["--image", one]) for _ in range(args.repeats))
            folder_s = timed(base + ["--folder", str(folder)])
            row = {"backend": backend, "image_cli_s": round(image_s, 2), "folder_n": len(ids), "folder_s": round(folder_s, 1),
                   "folder_ms_per_image": round((folder_s - image_s) / len(ids) * 1000, 1), **meta}  # fmt: skip
            print(
                f"{backend:5s}: --image {row['image_cli_s']:.2f} s | --folder of {len(ids)}: {row['folder_s']:.1f} s, "
                f"{row['folder_ms_per_image']:.0f} ms/image after start-up (calib {meta['calib_ms']} ms)"
            )
            rows.append(row)
        rows += refusal_rows(Path(tmp), args.repeats, meta)
    benchmark.append_rows(benchmark.benchmarks_dir() / "infer.csv", rows, ["backend", "run"])


if __name__ == "__main__":
    main()
