"""Benchmark classifier recipes across folds and seeds on one run folder's split and masks
(not a timed test).

Each (candidate, variant, fold, seed) trains on the training pool outside fold k (out-of-fold
masks from notebook 03) and is scored on fold k, never on the test split:

* ``valid_macro_f1``: the model the recipe keeps (its ``keep``: the last epoch, or the best
  one), with flip TTA, as the course predicts;
* ``valid_macro_f1_no_tta``: the same model without flip TTA (does TTA matter?);
* ``best_epoch_macro_f1``: the best epoch's score in the history, chosen on the very fold it is
  scored on (optimistic; the way many papers, and the plain loop of issue 19, report it);
* ``dev_*``: with an external set, the same model on its *development* patients (never its
  evaluation patients), masks painted by the run's fold-U-Net ensemble as the Predictor paints
  them: macro-F1, and the benign-vs-malignant AUC on their lesion scans, the one question the
  two-step rule leaves to the views.

Rows go to ``benchmarks/classifier_folds.csv`` (per-epoch histories in
``classifier_folds_history.csv``); ``benchmarks/classifier.csv`` holds one row per candidate and
variant: mean and SD over folds and seeds, with the machine's speed calibration. Finished rows
are skipped, so an interrupted benchmark resumes. Needs notebooks 01-03.

    python scripts/benchmark_classifier.py --run-dir runs/cpu --folds 0 1 2 --seeds 0 1 \\
        --variants image+pred_mask name=plain_e12,head=linear,epochs=12,lr_mult=10,label_smoothing=0.1 ...
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from busi_utils import data
from busi_utils.core import runfolder
from busi_utils.evaluation import benchmark, metrics
from busi_utils.stage1 import segmentation as seg
from busi_utils.stage2 import classification as cls

DEFAULTS = {"arch": "lite0", "pretrained": True, "size": 96, "epochs": 10, "batch_size": 32, "lr": 2e-3}
KEY = ["name", "variant", "fold", "seed"]


def development_inputs(paths, size: int, variants: list[str]) -> dict | None:
    """Each variant's inputs for the external set's development patients at ``size``, their masks
    painted by the run's fold-U-Net ensemble (nothing of an evaluation patient is loaded).
    ``None`` without an external set or a run with models."""
    from busi_utils.core.errors import RunFolderError
    from busi_utils.data import external, splits
    from busi_utils.evaluation import pipeline

    root, kind = external.find_external()  # a set path that does not work is an error, as everywhere
    try:
        models = pipeline.RunModels(paths.root)
    except RunFolderError as err:  # no trained run: the benchmark runs without these columns
        print(f"no development-patient columns: {err}", flush=True)
        return None
    if kind == "synthetic" or models.cls_size != size:
        return None
    index = external.build_external_index(root, progress=False)
    split = splits.load_or_make_patient_split(paths.external_split("bus_uclm"), index)
    dev = splits.development_rows(index, split).reset_index(drop=True)
    segmented = pipeline.segment_external(models, dev, progress=False)
    ids, stores, masks = segmented.ids, segmented.stores, dict(zip(segmented.ids, segmented.probs))
    crops = stores[cls.crop_source_size(size)]
    x = {v: cls.build_inputs(v, ids, stores[size], masks, size, crops) for v in variants}
    return {"x": x, "labels": dev["label"].astype(str).tolist()}


def score_development(dev: dict, variant: str, model, stats) -> dict:
    """A fold model on the development patients: macro-F1 and benign-vs-malignant AUC."""
    p = cls.predict_tta(model, dev["x"][variant], stats)
    m = metrics.classification_metrics(dev["labels"], p)
    return {"dev_macro_f1": round(m["macro_f1"], 4), "dev_bm_auc": round(m["benign_malignant_auc"], 4)}


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD per (candidate, variant) over its folds and seeds; the fastest run's time."""
    g = rows.groupby(["name", "variant"], sort=False)
    return (
        g.agg(
            runs=("valid_macro_f1", "size"),
            folds=("fold", "nunique"),
            seeds=("seed", "nunique"),
            valid_macro_f1_mean=("valid_macro_f1", "mean"),
            valid_macro_f1_sd=("valid_macro_f1", "std"),
            valid_accuracy_mean=("valid_accuracy", "mean"),
            valid_auc_mean=("valid_auc_ovr", "mean"),
            valid_malignant_recall_mean=("valid_malignant_recall", "mean"),
            valid_macro_f1_no_tta_mean=("valid_macro_f1_no_tta", "mean"),
            best_epoch_macro_f1_mean=("best_epoch_macro_f1", "mean"),
            **(
                {
                    "dev_macro_f1_mean": ("dev_macro_f1", "mean"),
                    "dev_macro_f1_sd": ("dev_macro_f1", "std"),
                    "dev_bm_auc_mean": ("dev_bm_auc", "mean"),
                    "dev_bm_auc_sd": ("dev_bm_auc", "std"),
                }
                if "dev_bm_auc" in rows
                else {}
            ),
            s_per_epoch=("s_per_epoch", "min"),
            s_per_model=("train_seconds", "min"),
            calib_ms=("calib_ms", "max"),
            date=("date", "max"),
            recipe=("recipe", "first"),
        )
        .reset_index()
        .round(4)
    )


def main() -> None:
    ap = benchmark.arg_parser(__doc__)
    ap.add_argument("--variants", default="image+pred_mask", help=f"comma-separated, from {', '.join(cls.VARIANTS)}")
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(cls.VARIANTS))
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(cls.VARIANTS)}")
    paths = runfolder.RunPaths.for_profile("cpu", args.run_dir)
    index = data.read_index(paths.index_csv)
    split = paths.read_split()
    out = Path(args.out)
    machine = benchmark.machine_info()
    print("machine:", machine, flush=True)
    done = pd.read_csv(out / "classifier_folds.csv") if (out / "classifier_folds.csv").exists() else None
    devs: dict[int, dict | None] = {}  # the development patients' inputs, once per size
    for name, recipe in benchmark.candidates(args.specs, DEFAULTS):
        vd = cls.load_variant_data(paths, index, split, recipe["size"], progress=False)
        if recipe["size"] not in devs:
            devs[recipe["size"]] = development_inputs(paths, recipe["size"], variants)
        dev = devs[recipe["size"]]
        spec = ",".join(f"{k}={v}" for k, v in sorted(recipe.items()))
        for variant in variants:
            for seed in args.seeds:
                for fold in args.folds:
                    if benchmark.already_done(done, name=name, variant=variant, fold=fold, seed=seed, recipe=spec):
                        continue  # resumed: this very run is in the table
                    (x_tr, y_tr), (x_va, y_va) = vd.fold_arrays(variant, fold)
                    model, hist, info = cls.train_classifier(
                        x_tr, y_tr, x_va, y_va, recipe, seg.fold_seed(seed, fold), show_progress=False,
                        kinds=cls.CHANNELS[variant],
                    )  # fmt: skip
                    p = cls.predict_tta(model, x_va, info["stats"])
                    m = metrics.classification_metrics(y_va, p)
                    plain = metrics.classification_metrics(y_va, cls.predict_proba(model, x_va, info["stats"]))
                    row = {
                        "name": name,
                        "variant": variant,
                        "fold": fold,
                        "seed": seed,
                        "epochs": len(hist),
                        "keep": recipe.get("keep", "best"),
                        "s_per_epoch": info["seconds_per_epoch"],
                        "train_seconds": info["train_seconds"],
                        **{
                            f"valid_{k}": round(m[k], 4)
                            for k in ("accuracy", "macro_f1", "malignant_recall", "auc_ovr")
                        },
                        "valid_macro_f1_no_tta": round(plain["macro_f1"], 4),
                        **(score_development(dev, variant, model, info["stats"]) if dev else {}),
                        "best_epoch_macro_f1": round(float(np.max(hist["f1_score"])), 4),
                        "best_epoch": int(np.argmax(hist["f1_score"])) + 1,
                        "n_train": len(y_tr),
                        "n_valid": len(y_va),
                        "recipe": spec,
                        **machine,
                    }
                    benchmark.record(out, "classifier_folds", row, hist.assign(seed=seed, fold=fold), KEY)
    table = summarise(pd.read_csv(out / "classifier_folds.csv"))
    benchmark.append_rows(out / "classifier.csv", table.to_dict("records"), ["name", "variant"])
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
