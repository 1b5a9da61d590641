"""How often does the out-of-distribution flag fire? On BUSI test scans (each a false alarm)
and on inputs that are not breast ultrasound at all (each should be flagged): the photos that
ship with matplotlib, synthetic noise and rendered text; and, when ``BUS_UCLM_ROOT`` is set, on
BUS-UCLM, breast ultrasound from another scanner (flags there measure the scanner shift).

    python scripts/benchmark_ood.py [--run runs/cpu]

Rows go to ``benchmarks/ood.csv`` with the machine's speed. The check is the run's,
fixed on BUSI validation scans in notebook 04: a score above 1 is flagged.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from busi_utils import data
from busi_utils.core import files, runfolder
from busi_utils.data import external
from busi_utils.evaluation import benchmark
from busi_utils.serve import infer


def non_ultrasound_images(n: int = 20, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Photos from matplotlib's sample data, noise and text pages, as arrays."""
    rng = np.random.default_rng(seed)
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    photos = [
        np.asarray(Image.open(sample / name).convert("RGB"))
        for name in ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
    ]
    photos += [
        np.asarray(Image.open(sample / "grace_hopper.jpg").convert("RGB").rotate(a, expand=True)) for a in (90, 180)
    ]
    font = ImageFont.load_default(size=18)
    text = []
    for k in range(n):
        page = Image.new("L", (400, 300), 255 if k % 2 else 0)
        draw = ImageDraw.Draw(page)
        for line in range(12):
            words = " ".join(rng.choice(["lesion", "benign", "report", "patient", "scan", "2026", "mm"], 5))
            draw.text((10, 10 + 24 * line), words, fill=0 if k % 2 else 255, font=font)
        text.append(np.asarray(page))
    return {
        "matplotlib photos": photos,
        "uniform noise": [rng.integers(0, 256, (256, 320), dtype=np.uint8) for _ in range(n)],
        "gaussian noise": [np.clip(rng.normal(128, 50, (300, 300)), 0, 255).astype(np.uint8) for _ in range(n)],
        "rendered text": text,
    }


def thresholds(paths: runfolder.RunPaths) -> dict:
    return files.read_json(paths.classifier_summary)["finalised"]["ood_thresholds"]


def rates(predictor: infer.Predictor, images) -> dict:
    score = np.array([predictor.predict(x).ood_score for x in images])
    return {"n": len(score), "flagged_fraction": float((score > 1).mean()), "score_median": float(np.median(score))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(runfolder.default_run()))
    args = ap.parse_args()
    paths = runfolder.RunPaths(Path(args.run).resolve())
    predictor = infer.Predictor(paths.root)
    index = data.read_index(paths.index_csv).set_index("image_id")
    test_ids = paths.read_split().query("split == 'test'")["image_id"]
    sources = {"BUSI test scans": [index.loc[i, "image_path"] for i in test_ids]}
    if os.environ.get("BUS_UCLM_ROOT"):
        root, _ = external.find_external(os.environ["BUS_UCLM_ROOT"])
        sources["BUS-UCLM (other scanner)"] = list(external.build_external_index(root)["image_path"])
    sources.update(non_ultrasound_images())
    meta = {"run": paths.root.name, "check": "+".join(f"{k}<{v:.1f}" for k, v in thresholds(paths).items()),
            **benchmark.machine_info()}  # fmt: skip
    rows = []
    for name, images in sources.items():
        row = {"source": name, **rates(predictor, images), **meta}
        print(
            f"{name:28s} n={row['n']:4d} flagged {row['flagged_fraction']:6.1%}  median score {row['score_median']:.2f}"
        )
        rows.append(row)
    benchmark.append_rows(benchmark.benchmarks_dir() / "ood.csv", rows, ["source", "run"])


if __name__ == "__main__":
    main()
