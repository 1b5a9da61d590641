"""Run the numbered notebooks in order with papermill: ``python -m busi_utils.course``.

Each notebook gets the same parameters (profile, run folder, data location, seed) and is
written, executed, into ``runs/<profile>/notebooks/``. Notebooks resume from what the run
folder already holds, so a second run after an interruption only does the missing work.

``timing.json`` keeps, per notebook, the seconds of the run that *computed* its results: a
run that changed none of the run folder's products (a resume) is logged under ``resumed``
and leaves the notebook's time, and so the course's total, as it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from busi_utils.core.config import PROFILES, repo_root
from busi_utils.core.files import atomic_write_json, file_sha256, read_json, remove_stale_temporaries
from busi_utils.core.runfolder import RunPaths
from busi_utils.evaluation.report import read_timing, timing_block


def course_notebooks(folder: Path | None = None) -> list[Path]:
    """The course's notebooks, in their numbered order."""
    folder = folder or repo_root() / "notebooks"
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


PRODUCTS = ("data", "models", "masks", "preds", "exports")  # folders of what notebooks compute


def products_fingerprint(paths: RunPaths) -> dict[str, str]:
    """SHA-256 of everything the notebooks compute (not the executed notebooks, figures or
    timing): equal before and after a notebook means the notebook resumed and computed nothing."""
    out = {}
    for folder in PRODUCTS:
        for path in sorted((paths.root / folder).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                out[str(path.relative_to(paths.root))] = file_sha256(path)
    for path in (paths.metrics_json,):  # results (07 adds its external block), compared without the timing entry
        doc = read_json(path)
        if doc is not None:
            doc.pop("timing", None)
            out[path.name] = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    return out


def changed_products(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """The products (see :func:`products_fingerprint`) a notebook created, changed or removed."""
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def record_time(timing: dict, stem: str, seconds: float, changed: Sequence[str]) -> bool:
    """Keep ``seconds`` as the notebook's time only when it computed in full: it has no time yet,
    or it rewrote every product it wrote when its time was taken (``timing["products"]``). A run
    that recomputed nothing, or only part (say a cache that had been cleared, beside models it
    loaded), is logged under ``resumed``, with what it recomputed, and the full time stays.
    Returns whether ``seconds`` became the notebook's time."""
    wrote = timing.setdefault("products", {}).get(stem)
    full = stem not in timing["notebooks"] or bool(changed) and (wrote is None or set(wrote) <= set(changed))
    if full:
        timing["notebooks"][stem] = round(seconds, 1)
        timing["products"][stem] = list(changed)
    else:
        entry = {"notebook": stem, "seconds": round(seconds, 1), "at": datetime.now().isoformat()}
        timing["resumed"].append({**entry, "recomputed": list(changed)} if changed else entry)
    return full


def as_parameter(run_root: Path) -> str:
    """The run folder as the chapters' ``run_dir`` parameter: relative to ``notebooks/`` (their
    working directory) when it lies in the checkout, so the executed chapter and the book show
    ``../runs/cpu`` rather than this machine's folders; absolute elsewhere."""
    root, notebooks = run_root.resolve(), repo_root() / "notebooks"
    return os.path.relpath(root, notebooks) if root.is_relative_to(repo_root()) else str(root)


def run_course(
    profile: str = "cpu",
    run_dir: str | None = None,
    busi_root: str | None = None,
    seed: int = 42,
    only: list[str] | None = None,
    kernel_name: str | None = None,
    progress: bool = True,
    cell_timeout: int | None = None,
) -> dict:
    """Execute the notebooks (or those whose number is in ``only``) and return ``timing.json``'s
    content. ``progress``: papermill's progress bar over each notebook's cells. ``cell_timeout``:
    seconds after which a cell that has not finished fails the run (the tests' guard against a
    hang; none by default, since a full cell on a slow laptop may legitimately take long).
    Reproducible mode (:mod:`busi_utils.core.reproducible`) was set when ``busi_utils`` was
    imported: every kernel started here inherits its pins."""
    import papermill as pm  # papermill: loaded where used (slow import)

    paths = RunPaths.for_profile(profile, run_dir)
    params = {  # as the executed chapter shows them: no machine path (the kernel reads $BUSI_ROOT itself)
        "profile": profile,
        "run_dir": as_parameter(paths.root),
        "busi_root": busi_root,
        "seed": seed,
    }
    timing = read_timing(paths)
    for nb in course_notebooks():
        if only and nb.name[:2] not in only:
            continue
        print(f"▶ {nb.name} ({profile})", flush=True)
        stale = remove_stale_temporaries(paths.root)  # an earlier run killed mid-write left these
        if stale:
            print(f"  removed {len(stale)} temporary file(s) an interrupted run left", flush=True)
        before = products_fingerprint(paths)
        start = time.perf_counter()
        declared = pm.inspect_notebook(str(nb))  # pass only what the notebook's parameters cell declares
        pm.execute_notebook(
            str(nb),
            str(paths.notebooks / nb.name),
            parameters={k: v for k, v in params.items() if k in declared},
            cwd=str(nb.parent),
            kernel_name=kernel_name,
            progress_bar=progress,  # one bar per notebook, cell by cell
            execution_timeout=cell_timeout,
            log_output=False,
            # the kernel's only log line is ipykernel's notice that a local kernel talks over TCP
            # without encryption (papermill's default transport, on this machine only): not for learners
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
        seconds = time.perf_counter() - start
        changed = changed_products(before, products_fingerprint(paths))
        if not record_time(timing, nb.stem, seconds, changed):
            what = f"recomputed {len(changed)} of its products" if changed else "nothing recomputed"
            print(f"  done in {seconds:.0f} s (resumed: {what}; the course keeps its full time)", flush=True)
        else:
            print(f"  done in {seconds:.0f} s", flush=True)
        atomic_write_json(paths.timing_json, timing)
    metrics = read_json(paths.metrics_json)
    if metrics is not None:  # the results file carries the time of the whole course
        metrics["timing"] = timing_block(paths)
        atomic_write_json(paths.metrics_json, metrics)
    return timing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m busi_utils.course", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--profile", default="cpu", choices=PROFILES, help="parameter set: quick (tests), cpu (default), gpu"
    )
    ap.add_argument("--run-dir", help="run folder (default runs/<profile>)")
    ap.add_argument("--busi-root", help="BUSI folder or Kaggle zip (default $BUSI_ROOT, then data/)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--only", nargs="*", help="notebook numbers to run, e.g. 01 02")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    run_course(args.profile, args.run_dir, args.busi_root, args.seed, args.only)
    print(f"course finished in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
