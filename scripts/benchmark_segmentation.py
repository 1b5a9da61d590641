"""Benchmark U-Net candidates across folds and seeds on one run folder's split (not a timed test).

Each candidate is trained exactly as the course trains its fold U-Nets
(:func:`busi_utils.stage1.segmentation.train_segmenter`, last epoch kept): on the training pool's lesion
images outside fold k, then scored on fold k's lesion images with the recipe's flip TTA, never on
the test split. Every (candidate, fold, seed) is one row of ``benchmarks/segmentation_folds.csv``
(with the per-epoch history in ``segmentation_folds_history.csv``); ``segmentation.csv`` holds one row
per candidate, mean and SD over its folds and seeds, with the machine's speed calibration.
Needs notebook 01 to have run for that run folder. Finished (candidate, fold, seed) rows are
skipped, so an interrupted benchmark resumes.

    python scripts/benchmark_segmentation.py --run-dir runs/cpu --folds 0 1 2 --seeds 0 1 \\
        name=light_96_e12,arch=light,size=96,epochs=12 \\
        name=lite0_96_e12,arch=lite0,pretrained=true,input_skip=true,freeze_epochs=1,epochs=11,lr_mult=10
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from busi_utils import data
from busi_utils.core import runfolder
from busi_utils.core.images import lesion_confidence
from busi_utils.data import preprocess
from busi_utils.evaluation import benchmark
from busi_utils.stage1 import segmentation as seg

DEFAULTS = {
    "arch": "light",
    "size": 96,
    "base": 12,
    "epochs": 12,
    "batch_size": 16,
    "lr": 3e-3,
    "loss": "dice_bce",
    "tta_flip": True,
    "normals": False,
    "aug": "standard",
}
KEY = ["name", "fold", "seed"]


POOL_WINDOWS = (3, 5, 7)  # patch sides (px at the U-Net's size) of the pooled presence statistics


def presence_evidence(probs: np.ndarray) -> pd.DataFrame:
    """Per image, the statistics of a predicted probability map that could answer "is there a
    lesion?": the highest pixel probability (``conf``), the highest mean over a k x k patch
    (``pooled_k``: a speck of a few pixels averages down, a lesion does not), the largest painted
    region and the painted share of the image, and the summed probability (``mass``)."""
    from scipy import ndimage

    rows = []
    for p in probs:
        painted = p >= 0.5
        labels, n = ndimage.label(painted)
        row = {
            "conf": float(p.max()),
            "largest_region": float(np.bincount(labels.ravel())[1:].max() / p.size) if n else 0.0,
            "painted": float(painted.mean()),
            "mass": float(p.mean()),
        }
        for k in POOL_WINDOWS:
            row[f"pooled_{k}"] = float(lesion_confidence(p, k))  # the Predictor's own, at window k
        rows.append(row)
    return pd.DataFrame(rows).round(5)


def presence_auc(conf_lesion: np.ndarray, conf_normal: np.ndarray) -> float:
    """How well the U-Net's highest pixel probability tells lesion scans from normal ones."""
    from sklearn.metrics import roc_auc_score

    if not len(conf_lesion) or not len(conf_normal):
        return float("nan")
    y = np.r_[np.ones(len(conf_lesion)), np.zeros(len(conf_normal))]
    return float(roc_auc_score(y, np.r_[conf_lesion, conf_normal]))


def score_development(dev: dict, model, info, evidence: list | None = None) -> dict:
    """On the external set's development patients (never its evaluation patients): Dice on lesion
    scans, painted area and share of normal scans with any pixel painted, and presence AUC
    (``evidence``: receives the per-scan :func:`presence_evidence`)."""
    probs = seg.predict_masks(model, info, dev["images"])
    if evidence is not None:
        evidence.append(presence_evidence(probs).assign(where="development", image_id=dev["ids"], lesion=dev["lesion"]))
    lesion = dev["lesion"]
    painted = (probs >= 0.5).reshape(len(probs), -1)
    conf = probs.reshape(len(probs), -1).max(1)
    return {
        "dev_dice": round(float(seg.score_masks(probs[lesion], dev["masks"][lesion])["dice"].mean()), 4),
        "dev_normal_fp_area": round(float(painted[~lesion].mean()), 4),
        "dev_normals_painted": round(float(painted[~lesion].any(1).mean()), 4),
        "dev_lesions_unpainted": round(float(1 - painted[lesion].any(1).mean()), 4),
        "dev_presence_auc": round(presence_auc(conf[lesion], conf[~lesion]), 4),
    }


def development_arrays(paths, size: int) -> dict | None:
    """The external set's development patients at ``size`` (the split is made once and kept in the
    run folder; nothing of an evaluation patient is loaded). ``None`` without an external set."""
    from busi_utils.data import splits
    from busi_utils.data.external import build_external_index, find_external, load_external_pair

    try:
        root, _ = find_external()
    except Exception:  # noqa: BLE001 - no external set: the benchmark runs without its columns
        return None
    index = build_external_index(root, progress=False)
    split = splits.load_or_make_patient_split(paths.external_split("bus_uclm"), index)
    dev = splits.development_rows(index, split).reset_index(drop=True)
    arr = preprocess.resized_arrays(dev, size, progress=False, loader=load_external_pair)
    order = [list(map(str, arr["ids"])).index(str(i)) for i in dev["image_id"]]
    return {"images": arr["images"][order], "masks": arr["masks"][order].astype(bool),
            "lesion": (dev["label"].astype(str) != "normal").to_numpy(), "ids": dev["image_id"].astype(str).tolist()}  # fmt: skip


def score_fold(store, manifest, fold: int, model, info, evidence: list | None = None) -> dict:
    """Held-out Dice (lesion images), painted area (normal images) and presence AUC of one fold
    model (``evidence``: receives the held-out scans' :func:`presence_evidence`)."""
    _, valid_ids = seg.fold_ids(manifest, fold)
    normal = manifest.query("split == 'train' and fold == @fold and label == 'normal'")["image_id"].tolist()
    imgs = np.stack([store.image(i) for i in valid_ids])
    start = time.perf_counter()
    probs = seg.predict_masks(model, info, imgs)
    infer_ms = (time.perf_counter() - start) / len(imgs) * 1000
    fp = seg.predict_masks(model, info, np.stack([store.image(i) for i in normal])) if normal else np.zeros((0, 1, 1))
    if evidence is not None:
        both = np.concatenate([probs, fp]) if len(fp) else probs
        lesion = np.r_[np.ones(len(probs), bool), np.zeros(len(fp), bool)]
        evidence.append(
            presence_evidence(both).assign(where="busi_fold", image_id=[*valid_ids, *normal], lesion=lesion)
        )
    return {
        "valid_dice": round(
            float(seg.score_masks(probs, np.stack([store.mask(i) for i in valid_ids]))["dice"].mean()), 4
        ),
        "normal_fp_area": round(float((fp >= 0.5).mean()) if len(fp) else float("nan"), 4),
        "valid_normals_painted": round(float((fp >= 0.5).reshape(len(fp), -1).any(1).mean()), 4),
        "valid_lesions_unpainted": round(float(1 - (probs >= 0.5).reshape(len(probs), -1).any(1).mean()), 4),
        "valid_presence_auc": round(
            presence_auc(probs.reshape(len(probs), -1).max(1), fp.reshape(len(fp), -1).max(1)), 4
        ),
        "infer_ms_per_image": round(infer_ms, 1),
        "n_valid": len(valid_ids),
    }


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per candidate: mean and SD of the held-out Dice over its (fold, seed) runs, the
    fastest run's time (a run that shared the machine is only slower; the Dice does not change,
    since training is deterministic on one machine), and the slowest calibration."""
    g = rows.groupby("name", sort=False)
    out = g.agg(
        arch=("arch", "first"),
        pretrained=("pretrained", "first"),
        size=("size", "first"),
        epochs=("epochs", "first"),
        loss=("loss", "first"),
        params_M=("params_M", "first"),
        runs=("valid_dice", "size"),
        folds=("fold", "nunique"),
        seeds=("seed", "nunique"),
        valid_dice_mean=("valid_dice", "mean"),
        valid_dice_sd=("valid_dice", "std"),
        normal_fp_area_mean=("normal_fp_area", "mean"),
        valid_presence_auc_mean=("valid_presence_auc", "mean"),
        valid_normals_painted_mean=("valid_normals_painted", "mean"),
        valid_lesions_unpainted_mean=("valid_lesions_unpainted", "mean"),
        dev_dice_mean=("dev_dice", "mean"),
        dev_dice_sd=("dev_dice", "std"),
        dev_normal_fp_area_mean=("dev_normal_fp_area", "mean"),
        dev_normals_painted_mean=("dev_normals_painted", "mean"),
        dev_lesions_unpainted_mean=("dev_lesions_unpainted", "mean"),
        dev_presence_auc_mean=("dev_presence_auc", "mean"),
        dev_presence_auc_sd=("dev_presence_auc", "std"),
        s_per_epoch=("s_per_epoch", "min"),  # sharing the CPU only ever adds time: the fastest run is the speed
        s_per_model=("train_seconds", "min"),
        calib_ms=("calib_ms", "max"),
        date=("date", "max"),
        recipe=("recipe", "first"),
    ).reset_index()
    return out.round(4)


def main() -> None:
    ap = benchmark.arg_parser(__doc__)
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    paths = runfolder.RunPaths.for_profile("cpu", args.run_dir)
    index = data.read_index(paths.index_csv)
    manifest = paths.read_split()
    out = Path(args.out)
    machine = benchmark.machine_info()
    print("machine:", machine, flush=True)
    done = pd.read_csv(out / "segmentation_folds.csv") if (out / "segmentation_folds.csv").exists() else None
    stores: dict[int, preprocess.ArrayStore] = {}
    devs: dict[int, dict | None] = {}
    for name, recipe in benchmark.candidates(args.specs, DEFAULTS):
        if recipe["size"] not in stores:
            stores[recipe["size"]] = preprocess.ArrayStore(
                preprocess.resized_arrays(index, recipe["size"], progress=False)
            )
        store = stores[recipe["size"]]
        if recipe["size"] not in devs:
            devs[recipe["size"]] = development_arrays(paths, recipe["size"])
        for seed in args.seeds:
            for fold in args.folds:
                spec = ",".join(f"{k}={v}" for k, v in sorted(recipe.items()))
                if benchmark.already_done(done, name=name, fold=fold, seed=seed, recipe=spec):
                    continue  # resumed: this very run is in the table
                evidence: list[pd.DataFrame] = []
                train_ids, valid_ids = seg.fold_ids(manifest, fold, normals=seg.trains_on_normals(recipe))
                model, hist, info = seg.train_segmenter(
                    store, train_ids, valid_ids, recipe, seg.fold_seed(seed, fold), show_progress=False
                )
                row = {
                    "name": name,
                    "fold": fold,
                    "seed": seed,
                    "arch": recipe["arch"],
                    "pretrained": bool(recipe.get("pretrained", False)),
                    "size": recipe["size"],
                    "epochs": len(hist),
                    "loss": recipe.get("loss", "dice_bce"),
                    "params_M": round(seg.n_params(model) / 1e6, 2),
                    "s_per_epoch": info["seconds_per_epoch"],
                    "train_seconds": info["train_seconds"],
                    **score_fold(store, manifest, fold, model, info, evidence),
                    **(score_development(devs[recipe["size"]], model, info, evidence) if devs[recipe["size"]] else {}),
                    "n_train": len(train_ids),
                    "recipe": spec,
                    **machine,
                }
                benchmark.record(out, "segmentation_folds", row, hist.assign(seed=seed, fold=fold), KEY)
                per_scan = pd.concat(evidence).assign(name=name, fold=fold, seed=seed)
                benchmark.append_rows(
                    out / "segmentation_presence.csv", per_scan.to_dict("records"), [*KEY, "where", "image_id"]
                )
    rows = pd.read_csv(out / "segmentation_folds.csv")
    table = summarise(rows)
    benchmark.append_rows(out / "segmentation.csv", table.to_dict("records"), ["name"])
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
