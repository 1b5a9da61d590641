"""Benchmark stage 1's fine-tuning on a new site's labelled patients beyond what chapter 8 can
afford (not a timed test): more steps and other layers (by default with BUSI's scans rehearsed: ``+home``).

Chapter 8 tunes the fold-0 U-Net for a few dozen steps on k development patients and scores the
*other* development patients (:func:`busi_utils.evaluation.finetune.finetune_study`). This
script runs the same study with other step counts and layer choices, on the same draws of
patients (the draws depend on the seed only), so each choice's gains pair with the others' draw
by draw. Nothing of an evaluation patient is loaded (:func:`busi_utils.data.splits.development_rows`).

One row per (choice, steps, draw) goes to ``benchmarks/finetune.csv`` with the machine, its
calibration and the seconds the choice took; a choice already in the file is skipped, so an
interrupted run resumes.

    python scripts/benchmark_finetune.py --run-dir runs/cpu --choices encoder+home all+home --steps 40 200
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from busi_utils import data
from busi_utils.core import config, reproducible
from busi_utils.data import external, preprocess, splits
from busi_utils.evaluation import benchmark, finetune, pipeline, site_views
from busi_utils.stage1 import folds

OUT = Path("benchmarks/finetune.csv")
KEY = ["layers", "steps", "lr", "k", "seed", "draws", "draw"]


def development_inputs(models: pipeline.RunModels, root, key: str = "bus_uclm"):
    """The external set's development patients (index rows, their resized scans)."""
    index = external.build_external_index(root, progress=False)
    split = splits.load_or_make_patient_split(models.paths.external_split(key), index)
    dev = splits.development_rows(index, split).reset_index(drop=True)
    stores = pipeline.resize_external(models, dev, progress=False)
    return dev, pipeline.Segmented(dev["image_id"].tolist(), "none", stores, None)  # no probabilities: not needed


def home_inputs(models: pipeline.RunModels, normals: bool) -> tuple:
    """The fold-0 U-Net's own BUSI training scans (to rehearse) and its held-out lesion scans."""
    paths = models.paths
    store = preprocess.ArrayStore(preprocess.resized_arrays(data.read_index(paths.index_csv), models.seg_size))
    rehearsed, never_seen = folds.fold_ids(paths.read_split(), 0, normals=normals)
    return store.take(rehearsed), store.take(never_seen)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", default="runs/cpu")
    ap.add_argument(
        "--profile",
        default=None,
        help="the run's profile (does stage 1 train on normal scans?); default: the run folder's name",
    )
    ap.add_argument("--external-root", default=None, help="BUS-UCLM folder or zip (default $BUS_UCLM_ROOT)")
    ap.add_argument("--choices", nargs="+", default=["encoder+home", "all+home"])
    ap.add_argument("--steps", nargs="+", type=int, default=[40, 200])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=42, help="chapter 8's seed gives chapter 8's draws")
    args = ap.parse_args()
    models = pipeline.RunModels(args.run_dir)
    cfg = config.load_profile(args.profile or Path(args.run_dir).resolve().name)
    root, kind = external.find_external(args.external_root)
    if kind == "synthetic":
        raise SystemExit("benchmark_finetune: BUS-UCLM not found (set BUS_UCLM_ROOT); a synthetic set measures nothing")
    dev, scans = development_inputs(models, root)
    home, check = home_inputs(models, cfg["seg"]["normals"])
    done = pd.read_csv(OUT) if OUT.exists() else None
    machine = benchmark.machine_info()
    for steps in args.steps:
        for choice in args.choices:
            wanted = {
                "layers": choice,
                "steps": steps,
                "lr": args.lr,
                "k": args.k,
                "seed": args.seed,
                "draws": args.draws,
            }
            if benchmark.already_done(done, **wanted):
                print(f"{choice}, {steps} steps: in {OUT} already")
                continue
            start = time.perf_counter()
            study = finetune.finetune_study(models, scans, dev, args.k, args.draws, steps, args.lr, layers=(choice,),
                                            seed=args.seed, home=home, home_check=check)  # fmt: skip
            described = reproducible.describe()
            study = study.assign(**{**wanted, "layers": study["layers"], "k": study["k"]}, seconds=round(time.perf_counter() - start, 1),
                                 cpu=described["cpu"], processor=" ".join(described["processor"].values()), **machine)  # fmt: skip
            print(f"{steps} steps: " + "\n".join(site_views.finetune_lines(study)))
            done = benchmark.append_rows(OUT, study.to_dict(orient="records"), KEY)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
