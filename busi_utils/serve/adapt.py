"""``python -m busi_utils.serve.adapt``: adapt a run to a new site (chapter 8).

    python -m busi_utils.serve.adapt --run runs/cpu --site myhospital --data NEW_SITE [--labelled]

Label-free (the default), it re-estimates the classifiers' batch-norm statistics on the new
site's scans, no label read. With ``--labelled`` it also refits, on the scans' labels, where
"a lesion" begins, the temperature and the referral cutoff. It writes ``<run>/sites/<name>/``
at once (:mod:`busi_utils.adapt.site`); then ``Predictor(run, site=name)``, ``infer --site``,
``evaluate --site``, the widgets and the web page answer with it.

``--split`` names a patient split (chapter 7 writes BUS-UCLM's): only its development patients
are read, and a patient of its evaluation side, asked for with ``--patients``, is refused by
name. ``--k`` draws that many labelled patients (seeded) from those allowed. Everything a user
can get wrong is refused, with exit 2 and nothing written, before a model loads.
Research and teaching only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from busi_utils import DISCLAIMER
from busi_utils.adapt import fewshot, site
from busi_utils.core.config import CLASSES
from busi_utils.core.errors import LeakageError, RunFolderError, SiteError
from busi_utils.core.runfolder import default_run
from busi_utils.data import BusiDataError
from busi_utils.data import splits as splits_mod
from busi_utils.data.external import build_external_index, resolve_external, unlabelled_index


def site_index(data: str, labelled: bool) -> pd.DataFrame:
    """The new site's scans: a labelled layout (BUS-UCLM's, or ``images/`` + ``labels.csv``), or
    for a label-free fit any folder of images. No scan at all is an error naming the folder."""
    path = Path(data).expanduser()
    if not path.exists():
        raise SiteError(f"{data}: no such folder or zip")
    try:
        root = resolve_external(path)  # a labelled layout (a zip is extracted once)
    except BusiDataError:
        if labelled or not path.is_dir():
            raise
        index = unlabelled_index(path)
    else:
        index = build_external_index(root, progress=False)
    if index.empty:
        raise SiteError(f"{data}: no scans found")
    return index


def adaptation_rows(
    index: pd.DataFrame, split_file: str | None, patients: str | None, k: int | None, labelled: bool, seed: int
):
    """The rows the fit may read: the development patients of ``split_file`` (or every scan),
    narrowed to ``patients`` and then to ``k`` drawn patients. Returns ``(rows, split or None)``."""
    split = None
    pool = sorted(index["patient"].astype(str).unique())
    if split_file:
        split = pd.read_csv(split_file, dtype={"patient": str})
        pool = sorted(set(pool) & splits_mod.patients_with_role(split, splits_mod.DEVELOPMENT))
    if patients:
        asked = [p.strip() for p in patients.split(",") if p.strip()]
        if split is not None:
            splits_mod.check_development_only(asked, split, "serve.adapt --patients")
        unknown = sorted(set(asked) - set(index["patient"].astype(str)))
        if unknown:
            raise SiteError(f"--patients: {', '.join(unknown[:5])} not in the site's scans")
        pool = sorted(set(asked))
    if k is not None:
        pool = fewshot.draw_patients(pool, k, 1, seed)[0]
    rows = index[index["patient"].astype(str).isin(pool)].reset_index(drop=True)
    if split is not None:
        splits_mod.check_development_only(rows["patient"], split, "serve.adapt")
    if rows.empty:
        raise SiteError("no scans left to adapt on (check --split / --patients)")
    if labelled:
        lesion = rows["label"].astype(str) != "normal"
        if lesion.all() or not lesion.any() or not set(rows["label"].astype(str)) <= set(CLASSES):
            kinds = ", ".join(sorted(rows["label"].astype(str).unique()))
            raise SiteError(
                f"a labelled set needs normal scans and lesion scans; these {len(rows)} scans are all: {kinds}"
            )
    return rows, split


def save_site(
    models,
    rows: pd.DataFrame,
    state: dict,
    params: dict,
    table: pd.DataFrame,
    name: str,
    split: pd.DataFrame | None,
    labelled: bool,
    data: str,
    force: bool = False,
    home_mix=None,
) -> Path:
    """Write the site folder (:func:`busi_utils.adapt.site.write_site`): the state, the adapted
    graphs in ONNX and the manifest of what it was fitted on. Chapter 8 calls it as the command does."""
    import torch  # the models' modules: loaded once the command's checks have passed

    from busi_utils.evaluation import adaptation  # the models' modules, after the checks
    from busi_utils.serve.export import export_site_onnx  # the models' modules, after the checks

    adapted = models.with_state(state)
    manifest = {
        "run": site.run_fingerprint(models.paths.root),
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "method": {
            "batchnorm": adaptation.state_part(state),
            "labelled": bool(labelled),
            "presence_grid": list(adaptation.SITE_GRID),
        },
        "data": {
            "name": Path(data).name,
            "scans": len(rows),
            "scans_sha256": site.scans_fingerprint(list(zip(rows["rel_path"].astype(str), rows["sha256"].astype(str)))),
            "patients": sorted(rows["patient"].astype(str).unique()),
            "labels": rows["label"].astype(str).value_counts().to_dict() if labelled else None,
        },
        "split": {"sha": splits_mod.patient_split_hash(split)} if split is not None else None,
        "prior": adaptation.estimated_prior(table, params, home_mix),
        **{k: params[k] for k in ("fusion", "temperature", "entropy_cutoff")},
    }

    def fill(tmp: Path) -> None:
        torch.save(state, tmp / site.STATE)
        export_site_onnx(models.paths, adapted.seg_graph, adapted.graphs, params, tmp / site.EXPORTS, name)

    return site.write_site(models.paths.root, name, manifest, fill, force=force)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m busi_utils.serve.adapt", description=__doc__.splitlines()[0] + " " + DISCLAIMER
    )
    ap.add_argument("--run", default=None, help="run folder (default: runs/cpu, else runs/gpu, else runs/quick)")
    ap.add_argument("--site", required=True, help="the site's name: its folder under <run>/sites/")
    ap.add_argument(
        "--data", required=True, help="the new site's scans: folder or zip (labelled layout, or any images)"
    )
    ap.add_argument("--labelled", action="store_true", help="also refit the decision on the scans' labels")
    ap.add_argument(
        "--split", default=None, help="a patient split CSV (patient, role): read its development patients only"
    )
    ap.add_argument("--patients", default=None, help="comma-separated patients to adapt on")
    ap.add_argument("--k", type=int, default=None, help="draw this many patients (seeded) from those allowed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="replace a site of that name")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    try:  # everything a user can get wrong, before a model loads
        run_root = Path(args.run or default_run()).resolve()
        name = site.check_name(args.site)
        folder = site.site_folder(run_root, name)
        if folder.exists() and not args.force:
            raise SiteError(f"{folder}: the site exists (use --force to replace it)")
        site.run_fingerprint(run_root)  # a run without finalised models is refused here
        index = site_index(args.data, args.labelled)
        rows, split = adaptation_rows(index, args.split, args.patients, args.k, args.labelled, args.seed)
    except (SiteError, BusiDataError, LeakageError, RunFolderError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from busi_utils.evaluation import adaptation  # the models, after the checks
    from busi_utils.evaluation.pipeline import RunModels, resize_external, segment_stores  # after the checks

    models = RunModels(run_root)
    stores = resize_external(models, rows, progress=True)
    scans = segment_stores(models, rows["image_id"].tolist(), stores)
    state, params, table = adaptation.fit_site(models, rows, scans, args.labelled)
    try:  # the mix the run's answers carry, from BUSI's out-of-fold answers (when BUSI is at hand)
        home_mix = adaptation.oof_answers(models)["probs"].mean(0)
    except (OSError, BusiDataError, KeyError, ValueError):
        home_mix = None
    try:
        folder = save_site(
            models, rows, state, params, table, name, split, args.labelled, str(args.data), args.force, home_mix
        )
    except SiteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"site {name}: {len(rows)} scans of {rows['patient'].nunique()} patients, "
        f"{'labelled' if args.labelled else 'label-free'}; written to {folder} in {time.perf_counter() - start:.0f} s"
    )
    print(
        f"use it: Predictor(run, site={name!r}) | infer --site {name} | evaluate --site {name} | {DISCLAIMER}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
