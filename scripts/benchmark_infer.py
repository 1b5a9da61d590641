"""Inference speed as a user meets it: one image with the command line (process start to
exit), and a folder of 100 test images, for the torch and the ONNX backend.

    python scripts/benchmark_infer.py [--run runs/cpu] [--repeats 3]

Rows go to ``benchmarks/infer.csv`` with the machine's speed (targets on 2 cores: one image
at most 2 s, a folder at most 60 ms per image). A measurement, not a test.
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

from busi_utils import data
from busi_utils.core import benchmark, runfolder


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(runfolder.default_run()))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
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
    benchmark.append_rows(benchmark.benchmarks_dir() / "infer.csv", rows, ["backend", "run"])


if __name__ == "__main__":
    main()
