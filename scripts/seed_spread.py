"""The shipped method's spread over training seeds, on one run folder's split and masks (not a
timed test).

For each seed, every view of the profile's ensemble and the image-only ablation get their
cross-fitted members (the run's own members for the run's seed; for another seed, members
saved beside them as ``..._fold<k>_seed<s>.pt``), and the whole of notebook 04's decision is
redone from that seed's out-of-fold probabilities: the fused rule (:func:`busi_utils.stage2.fusion.select`),
the temperature, then the test answers as the Predictor computes them (:func:`busi_utils.stage2.fusion.decide`).
The split and the stage-1 masks stay those of the run, so the spread is that of stage 2's
training alone: what a second run on the same machine would move.

Each seed's members are also run on the external set when the real one is found
(``$BUS_UCLM_ROOT`` or ``data/``; never the synthetic stand-in) exactly as notebook 07 runs the
run's own (:meth:`busi_utils.evaluation.pipeline.RunModels.with_members`): one run's external
score moves with the training seed too, so it is reported with its spread. Reported, never
used to choose.

Rows (profile x seed x variant, test metrics, ``ext_*`` external metrics) go to
``benchmarks/seed_spread.csv``; finished seeds are resumed from their saved members. Needs a run
folder with notebooks 01-05 done (the run's seed is read from its ``metrics.json``).

    python scripts/seed_spread.py --run-dir runs/cpu            # the run's seed, then 1 and 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from busi_utils import data
from busi_utils.core import config, runfolder
from busi_utils.core.files import read_json
from busi_utils.data import external
from busi_utils.evaluation import benchmark, metrics, pipeline, uncertainty
from busi_utils.evaluation import seeds as seed_record
from busi_utils.stage2 import classification as cls
from busi_utils.stage2 import crossfit, fusion

KEYS = ("accuracy", "macro_f1", "malignant_recall", "auc_ovr", "benign_malignant_auc")


def external_scores(models: pipeline.RunModels, index, segmented: pipeline.Segmented) -> dict[str, dict]:
    """Per variant (the method, each view, image-only): the external set's metrics, as notebook 07
    computes them (point estimates; the chapter adds the patient-bootstrap intervals)."""
    table, _ = pipeline.predict_external(models, index, progress=False, segmented=segmented)
    out = {}
    for variant in [pipeline.METHOD, *models.graphs]:
        rows, p = pipeline.variant_probs(table, variant)
        out[variant] = metrics.classification_metrics(rows["label"], p)
    return out


def seed_rows(
    vd: cls.VariantData,
    recipe: dict,
    ensemble: dict,
    seed: int,
    run_seed: int,
    ext: tuple | None = None,
    rule: str | None = None,
) -> list[dict]:
    """Test metrics of the method and its parts for the members of one training seed, and with
    ``ext = (RunModels, external index, its Segmented)`` their external metrics (columns ``ext_*``)."""
    tag = None if seed == run_seed else seed
    views = [*ensemble["views"], "image_only"]
    for view in views:
        crossfit.train_view(vd, view, recipe, seed, ensemble["members"], tag=tag)
    oof = crossfit.oof_table(vd, views, ensemble["members"], tag)
    comparison, chosen, params, cv = fusion.select(oof, seed, rule=rule)
    temperature = uncertainty.fit_temperature(oof["label"], cv)
    test = crossfit.test_table(vd, views, ensemble["members"], tag)
    probs = {v: crossfit.view_matrix(test, v) for v in views}
    probs = {"method": fusion.decide(params, probs, test["conf"].to_numpy(), temperature), **probs}
    ext_scores = external_scores(ext[0].with_members(tag, params, temperature), *ext[1:]) if ext else {}
    rows = []
    for variant, p in probs.items():
        m = metrics.classification_metrics(test["label"], p)
        rows.append(
            {
                "seed": seed,
                "variant": variant,
                **{k: round(float(m[k]), 4) for k in KEYS},
                "fusion": chosen,
                "temperature": round(temperature, 4),
                "oof_macro_f1": round(float(comparison.loc[chosen, "macro_f1"]), 4),
                "members": len(ensemble["members"]),
                "n_test": len(test),
                **{
                    seed_record.external_column(k): round(float(v), 4)
                    for k, v in ext_scores.get(variant, {}).items()
                    if k in seed_record.EXTERNAL_KEYS
                },
            }
        )
    return rows


def run_seed_of(paths: runfolder.RunPaths) -> int:
    """The seed the run folder's own members were trained with (from ``metrics.json``): only
    that seed may resume them; every other seed saves tagged members beside them."""
    m = read_json(paths.metrics_json)
    if m is None or "seed" not in m:
        raise SystemExit(f"{paths.metrics_json}: missing (run notebooks 01-05 first): the run's seed is read from it")
    return int(m["seed"])


def external_set(root: str | None, skip: bool, seed: int, max_images) -> tuple | None:
    """``(name, index)`` of the real external set, or ``None`` (asked to skip, or only the
    synthetic stand-in found: its numbers test software, not models)."""
    if skip:
        return None
    path, kind = external.find_external(root)
    if kind == "synthetic":
        print("no external set (set BUS_UCLM_ROOT): external columns left empty", flush=True)
        return None
    return path.name, external.subset_patients(external.build_external_index(path), max_images, seed)


def spread(table):
    """Mean, SD and range over seeds per variant."""
    g = table.groupby("variant", sort=False)
    out = g[list(KEYS)].agg(["mean", "std", "min", "max"]).round(4)
    out.columns = [f"{k}_{s}" for k, s in out.columns]
    return out.assign(seeds=g.size())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", required=True, help="a run folder with notebooks 01-05 done")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the run's own seed, then 1 and 2")
    ap.add_argument("--out", default=str(seed_record.record_path()))
    ap.add_argument("--external", default=None, help="external set (folder or zip); default $BUS_UCLM_ROOT, then data/")
    ap.add_argument("--no-external", action="store_true", help="score the BUSI test split only")
    args = ap.parse_args(argv)
    cfg = config.load_profile(args.profile)
    paths = runfolder.RunPaths(Path(args.run_dir).resolve())
    index, split = data.read_index(paths.index_csv), paths.read_split()
    vd = cls.load_variant_data(paths, index, split, cfg["classify"]["size"], progress=False)
    run_seed = run_seed_of(paths)
    seeds = args.seeds or [run_seed, *(s for s in (1, 2) if s != run_seed)]
    info = benchmark.machine_info()
    found = external_set(args.external, args.no_external, run_seed, cfg["external"]["max_images"])
    if found:  # stage 1 is the run's for every seed: its masks of the external set are computed once
        models = pipeline.RunModels(paths.root)
        ext = (models, found[1], pipeline.segment_external(models, found[1], progress=False))
        info = dict(info, external_set=found[0])
    else:
        ext = None
    for seed in seeds:
        rows = seed_rows(vd, cfg["classify"], cfg["ensemble"], seed, run_seed, ext, cfg["decision"]["rule"])
        rows = [dict(r, profile=args.profile, **info) for r in rows]
        table = benchmark.append_rows(Path(args.out), rows, ["profile", "seed", "variant"])
        print(f"seed {seed}:", {r["variant"]: (r["accuracy"], r["macro_f1"]) for r in rows}, flush=True)
    table = table[
        (table["profile"] == args.profile)
        & table["seed"].isin(seeds)
        & (table["members"] == len(cfg["ensemble"]["members"]))
    ]
    print(spread(table).to_string())
    ahead = table.pivot(index="seed", columns="variant", values="macro_f1")
    print("method ahead of image-only in every seed:", bool(np.all(ahead["method"] > ahead["image_only"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
