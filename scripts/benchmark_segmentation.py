"""Benchmark U-Net configurations on one run folder (not a timed test).

Trains each configuration on the training pool's lesion images minus fold 0, validates on
fold 0, and prints (and saves as CSV) seconds per epoch, inference ms per image, validation
Dice and parameters. Needs notebook 01 to have run for that run folder.

    python scripts/benchmark_segmentation.py --run-dir runs/cpu light:8:128:12 attention:8:128:12
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from busi_utils import config, data, preprocess, segmentation as seg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("configs", nargs="+", help="arch:base:size:epochs, e.g. light:8:128:12")
    args = ap.parse_args()
    paths = config.RunPaths.for_profile("cpu", args.run_dir)
    index = data.read_index(paths.index_csv)
    manifest = pd.read_csv(paths.split_csv, keep_default_na=False)
    train_ids = seg.lesion_train_ids(manifest, exclude_fold=0)
    valid_ids = manifest[(manifest["split"] == "train") & (manifest["fold"] == 0) & (manifest["label"] != "normal")]["image_id"].tolist()
    out_csv = paths.root / "benchmark_segmentation.csv"
    rows = pd.read_csv(out_csv).to_dict("records") if out_csv.exists() else []
    for spec in args.configs:
        arch, base, size, epochs = spec.split(":")
        store = preprocess.ArrayStore(preprocess.resized_arrays(index, int(size), progress=False))
        recipe = {"arch": arch, "base": int(base), "size": int(size), "epochs": int(epochs), "batch_size": 16, "lr": 3e-3, "loss": "dice_bce"}
        model, hist, info = seg.train_segmenter(store, train_ids, valid_ids, recipe, args.seed, select_on_valid=True, show_progress=False)
        imgs = np.stack([store.image(i) for i in valid_ids])
        seg.predict_masks(model, info, imgs[:16])
        t = time.perf_counter()
        seg.predict_masks(model, info, imgs)
        infer_ms = (time.perf_counter() - t) / len(imgs) * 1000
        row = {"arch": arch, "base": int(base), "size": int(size), "epochs": int(epochs), "params_M": round(seg.n_params(model) / 1e6, 2),
               "s_per_epoch": info["seconds_per_epoch"], "infer_ms_per_image": round(infer_ms, 1),
               "valid_dice_best": round(float(hist["dice"].max()), 3), "valid_dice_last": round(float(hist["dice"].iloc[-1]), 3),
               "n_train": len(train_ids), "threads": torch.get_num_threads()}
        print(row, flush=True)
        rows = [r for r in rows if (r["arch"], r["base"], r["size"], r["epochs"]) != (arch, int(base), int(size), int(epochs))] + [row]
        config.atomic_write_text(out_csv, pd.DataFrame(rows).to_csv(index=False))
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
