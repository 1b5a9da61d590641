"""Benchmark the decision rules (how the views and stage 1's evidence become one answer) at home
and on another hospital's development patients (not a timed test).

Every candidate of :mod:`busi_utils.stage2.fusion` is scored twice:

* on BUSI's out-of-fold answers of a run folder (each fitted part cross-validated over the
  folds; what notebook 04 compares);
* on an external set's **development patients** (the patient split of notebook 07, made here
  if absent): the run's models, unchanged, answer their scans, and each rule, fitted on all of
  BUSI's out-of-fold answers, decides. Intervals resample patients. Nothing of an evaluation
  patient is loaded (:func:`busi_utils.data.splits.development_rows`).

One row per (run, rule) goes to ``benchmarks/decision.csv`` with the run's stage-1 recipe and
seed, the machine and its calibration, so runs of other seeds or stage-1 recipes stack up and
are summarised as mean and SD over runs. A profile's ``decision.rule`` is chosen from this table:
the best on the development patients, unless it loses more than 0.01 of BUSI out-of-fold
macro-F1, and where the two disagree the one that travels, said so.

    python scripts/benchmark_decision.py --run-dir runs/cpu
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from busi_utils import data
from busi_utils.core import config, runfolder
from busi_utils.core.files import read_json
from busi_utils.data import external, splits
from busi_utils.evaluation import benchmark, metrics, pipeline
from busi_utils.stage2 import classification as cls
from busi_utils.stage2 import crossfit, fusion

KEYS = ("macro_f1", "lesions_called_normal", "normals_called_lesion", "benign_malignant_auc")
KEY = ["run", "rule"]


def development_answers(models: pipeline.RunModels, root) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's models on the development patients of the external set at ``root``:
    ``(per-image table, patient split)``."""
    index = external.build_external_index(root, progress=False)
    split = splits.load_or_make_patient_split(models.paths.external_split("bus_uclm"), index)
    dev = splits.development_rows(index, split).reset_index(drop=True)
    table, _ = pipeline.predict_external(models, dev, progress=False)
    return table, split


def rule_rows(oof: pd.DataFrame, dev: pd.DataFrame, n_boot: int, seed: int) -> list[dict]:
    """Per rule: BUSI out-of-fold scores (cross-validated) and development-patient scores
    (fitted on all of BUSI's out-of-fold answers), with patient-bootstrap intervals."""
    views = [fusion.SCAN_VIEW, fusion.CROP_VIEW]
    p_b = [oof[[f"{v}:p_{c}" for c in config.CLASSES]].to_numpy() for v in views]
    p_d = [dev[[f"{v}:p_{c}" for c in config.CLASSES]].to_numpy() for v in views]
    comparison, cv = fusion.compare(oof["label"], oof["fold"], *p_b, oof["conf"], seed)
    y = np.array([config.CLASSES.index(str(c)) for c in oof["label"]])
    rows = []
    for rule in fusion.ALL_RULES:
        params = fusion.fit(rule, y, *p_b, oof["conf"])
        home = metrics.classification_metrics(oof["label"], cv[rule])
        away = metrics.classification_with_ci(
            dev["label"], fusion.fuse(params, *p_d, dev["conf"]), list(KEYS), n_boot=n_boot, seed=seed,
            groups=dev["patient"],
        )  # fmt: skip
        row = {"rule": rule, **{f"busi_oof_{k}": round(float(home[k]), 4) for k in KEYS if k in home}}
        for k, m in away.items():
            row[f"dev_{k}"] = round(float(m["value"]), 4)
            row[f"dev_{k}_ci95"] = "-".join(f"{x:.3f}" for x in m["ci95"])
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a run folder with notebooks 01-04 done")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--external", default=None, help="external set (folder or zip); default $BUS_UCLM_ROOT")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "benchmarks"))
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    cfg = config.load_profile(args.profile)
    paths = runfolder.RunPaths(Path(args.run_dir).resolve())
    root, kind = external.find_external(args.external)
    if kind == "synthetic":
        raise SystemExit("no external set (set BUS_UCLM_ROOT): the development columns need the real one")
    index, split = data.read_index(paths.index_csv), paths.read_split()
    vd = cls.load_variant_data(paths, index, split, cfg["classify"]["size"], progress=False)
    summary = read_json(paths.classifier_summary)
    oof = crossfit.oof_table(vd, summary["views"], summary["members"])
    models = pipeline.RunModels(paths.root)
    dev, _ = development_answers(models, root)
    stage1 = read_json(paths.stage1_summary) or {}
    recipe = stage1.get("recipe", {})
    seed = int((read_json(paths.metrics_json) or {}).get("seed", stage1.get("seed", 0)))
    tag = f"{'normals' if recipe.get('normals') else 'lesions'}_{recipe.get('size')}_seed{seed}"
    info = benchmark.machine_info()
    rows = [
        {
            "run": tag,
            "seed": seed,
            "stage1_normals": bool(recipe.get("normals", False)),
            "stage1_size": recipe.get("size"),
            "n_oof": len(oof),
            "n_dev": len(dev),
            "n_dev_patients": int(dev["patient"].nunique()),
            **r,
            **info,
        }  # fmt: skip
        for r in rule_rows(oof, dev, args.n_boot, seed)
    ]
    out = Path(args.out) / "decision.csv"
    benchmark.append_rows(out, rows, KEY)
    table = pd.read_csv(out)
    cols = [c for c in table if c.startswith(("busi_oof_", "dev_")) and not c.endswith("_ci95")]
    print(table.groupby("rule", sort=False)[cols].agg(["mean", "std"]).round(3).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
