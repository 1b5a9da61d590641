"""The whole pipeline's spread over seeds (stage 1 and stage 2 retrained), at home and on the
external set's evaluation patients (not a timed test).

``scripts/seed_spread.py`` retrains stage 2 alone on one run's masks; this reads several
complete runs of the course, each made with its own seed (``python -m busi_utils.course
--profile cpu --seed 1 --run-dir runs/cpu_seed1 --only 01 02 03 04 05 07``), and puts their
``metrics.json`` side by side: BUSI test (the run's own grouped split for that seed) and the
external set's evaluation patients (one patient split for every run: it does not depend on the
seed). One row per run goes to ``benchmarks/pipeline_seeds.csv`` with the machine that made it;
the summary is mean and SD over runs.

    python scripts/pipeline_spread.py runs/cpu runs/cpu_seed1 runs/cpu_seed2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from busi_utils.core.files import read_json
from busi_utils.core.runfolder import RunPaths
from busi_utils.evaluation import benchmark

HOME = ("accuracy", "macro_f1", "benign_malignant_auc")
AWAY = ("macro_f1", "lesions_called_normal", "normals_called_lesion", "benign_malignant_auc")
KEY = ["seed", "run"]


def run_row(run: Path) -> dict:
    """One run's headline figures from its results file (the method, as the Predictor ships it)."""
    path = RunPaths(run).metrics_json
    m = read_json(path)
    if m is None or "classification" not in m:
        raise SystemExit(f"{path}: missing or incomplete (run notebooks 01-05 and 07)")
    ext = m.get("external", {}).get("bus_uclm")
    if ext is None or ext.get("patients") != "evaluation":
        raise SystemExit(f"{path}: no BUS-UCLM block on its evaluation patients (run notebook 07)")
    home, away = m["classification"]["method"], ext["variants"]["method"]
    machine = m.get("machine", {})
    return {
        "seed": int(m["seed"]),
        "run": run.name,
        "busi_dice": round(m["segmentation"]["dice_mean"], 4),
        **{f"busi_{k}": round(home[k], 4) for k in HOME},
        "ext_dice": round(ext["dice_mean"], 4),
        **{f"ext_{k}": round(away[k], 4) for k in AWAY if k in away},
        "ext_images": ext["n_images"],
        "ext_patients": ext["n_patients"],
        "patient_split_sha": ext.get("patient_split", {}).get("sha"),
        "cpu": machine.get("cpu", ""),
        **{k: v for k, v in benchmark.machine_info().items() if k in ("date", "calib_ms")},
    }


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in rows if c.startswith(("busi_", "ext_")) and c not in ("ext_images", "ext_patients")]
    return rows[cols].agg(["mean", "std", "min", "max"]).T.round(4).assign(runs=len(rows))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="complete run folders, one per seed")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "pipeline_seeds.csv"))
    args = ap.parse_args(argv)
    rows = [run_row(Path(r).resolve()) for r in args.runs]
    if len({r["patient_split_sha"] for r in rows}) > 1:
        raise SystemExit("the runs scored different evaluation patients: their external figures do not compare")
    benchmark.append_rows(Path(args.out), rows, KEY)
    print(summarise(pd.DataFrame(rows)).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
