"""Benchmark U-Net candidates on one run folder's split (not a timed test).

Each candidate trains on the training pool's lesion images minus fold 0 and is scored on fold
0's lesion images (never the test split). Rows go to ``benchmarks/segmentation.csv`` and
per-epoch histories to ``benchmarks/segmentation_history.csv``, with the machine's speed
calibration (``busi_utils.benchmark``). Needs notebook 01 to have run for that run folder.

    python scripts/benchmark_segmentation.py --run-dir runs/cpu \\
        name=pretrained,arch=lite0,size=96,epochs=11,freeze_epochs=1,pretrained=true \\
        name=scratch,arch=lite0,size=96,epochs=12,pretrained=false
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from busi_utils import benchmark, data, preprocess, runfolder
from busi_utils import segmentation as seg

DEFAULTS = {
    "arch": "lite0",
    "size": 96,
    "base": 12,
    "epochs": 12,
    "batch_size": 16,
    "lr": 3e-3,
    "loss": "dice_bce",
    "tta_flip": True,
}


def main() -> None:
    args = benchmark.arg_parser(__doc__).parse_args()
    paths = runfolder.RunPaths.for_profile("cpu", args.run_dir)
    index = data.read_index(paths.index_csv)
    manifest = paths.read_split()
    train_ids = seg.lesion_train_ids(manifest, exclude_fold=0)
    valid_ids = manifest.query("split == 'train' and fold == 0 and label != 'normal'")["image_id"].tolist()
    machine = benchmark.machine_info()
    print("machine:", machine, flush=True)
    for name, recipe in benchmark.candidates(args.specs, DEFAULTS):
        store = preprocess.ArrayStore(preprocess.resized_arrays(index, recipe["size"], progress=False))
        model, hist, info = seg.train_segmenter(
            store, train_ids, valid_ids, recipe, args.seed, select_on_valid=True, show_progress=False
        )
        imgs = np.stack([store.image(i) for i in valid_ids])
        truth = np.stack([store.mask(i) for i in valid_ids])
        start = time.perf_counter()
        probs = seg.predict_masks(model, info, imgs)
        infer_ms = (time.perf_counter() - start) / len(imgs) * 1000
        row = {
            "name": name,
            "arch": recipe["arch"],
            "pretrained": bool(recipe.get("pretrained", False)),
            "size": recipe["size"],
            "epochs": len(hist),
            "params_M": round(seg.n_params(model) / 1e6, 2),
            "s_per_epoch": info["seconds_per_epoch"],
            "infer_ms_per_image": round(infer_ms, 1),
            "valid_dice_best_epoch": round(float(hist["dice"].max()), 3),
            "valid_dice_tta": round(float(seg.score_masks(probs, truth)["dice"].mean()), 3),
            "epochs_to_95pct": int((hist["dice"] >= 0.95 * hist["dice"].max()).idxmax()) + 1,
            "n_train": len(train_ids),
            "n_valid": len(valid_ids),
            "seed": args.seed,
            **machine,
        }
        benchmark.record(args.out, "segmentation", row, hist, ["name"])
    print(pd.read_csv(Path(args.out) / "segmentation.csv").to_string(index=False))


if __name__ == "__main__":
    main()
