"""Benchmark classifier candidates on one run folder's split and masks (not a timed test).

Each candidate trains the given variants on folds 1..K-1 of the training pool (out-of-fold
masks from notebook 03) and is scored on fold 0 (never the test split). Rows go to
``benchmarks/classifier.csv``, per-epoch histories to ``benchmarks/classifier_history.csv``,
with the machine's speed calibration (``busi_utils.benchmark``). Needs notebooks 01-03.

    python scripts/benchmark_classifier.py --run-dir runs/cpu --variants image_only,image+pred_mask \\
        name=pretrained_96,arch=lite0,size=96,epochs=9,freeze_epochs=1,pretrained=true \\
        name=scratch_96,arch=lite0,size=96,epochs=10,pretrained=false
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from busi_utils import benchmark, data, metrics, oof, preprocess, runfolder
from busi_utils import classification as cls

DEFAULTS = {"arch": "lite0", "size": 96, "epochs": 10, "batch_size": 32, "lr": 2e-3, "balance": "weighted_loss"}


def main() -> None:
    ap = benchmark.arg_parser(__doc__)
    ap.add_argument("--variants", default="image+pred_mask", help=f"comma-separated, from {', '.join(cls.VARIANTS)}")
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(cls.VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(cls.VARIANTS)}")
    paths = runfolder.RunPaths.for_profile("cpu", args.run_dir)
    index = data.read_index(paths.index_csv)
    split = paths.read_split()
    manifest = oof.read_mask_manifest(paths)
    oof.check_leak_free(manifest, split, paths)
    used = split[split["split"] == "train"]["image_id"].tolist()
    pred_masks = dict(zip(used, oof.load_masks(paths, manifest, used)))
    machine = benchmark.machine_info()
    print("machine:", machine, flush=True)
    for name, recipe in benchmark.candidates(args.specs, DEFAULTS):
        images = preprocess.ArrayStore(preprocess.resized_arrays(index, recipe["size"], progress=False))
        vd = cls.VariantData(paths, split, images, pred_masks, recipe["size"])
        for variant in variants:
            x_tr, y_tr = vd.arrays(variant, "train")
            x_va, y_va = vd.arrays(variant, "valid")
            model, hist, info = cls.train_classifier(
                x_tr, y_tr, x_va, y_va, recipe, args.seed, show_progress=False, kinds=cls.CHANNELS[variant]
            )
            m = metrics.classification_metrics(y_va, cls.predict_proba(model, x_va, info["stats"]))
            row = {
                "name": name,
                "variant": variant,
                "arch": recipe["arch"],
                "pretrained": bool(recipe.get("pretrained", False)),
                "size": recipe["size"],
                "epochs": len(hist),
                "mask_aug": bool(recipe.get("mask_aug", False)),
                "s_per_epoch": info["seconds_per_epoch"],
                "best_epoch": info["best_epoch"] + 1,
                **{f"valid_{k}": round(m[k], 3) for k in ("accuracy", "macro_f1", "malignant_recall", "auc_ovr")},
                "n_train": len(y_tr),
                "n_valid": len(y_va),
                "seed": args.seed,
                **machine,
            }
            benchmark.record(args.out, "classifier", row, hist, ["name", "variant"])
    print(pd.read_csv(Path(args.out) / "classifier.csv").to_string(index=False))


if __name__ == "__main__":
    main()
