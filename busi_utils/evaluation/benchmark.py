"""Benchmarks that choose the profiles: candidates trained on the same split, scored on the
validation fold only, timed on this machine, with a speed calibration beside the numbers.

Machines of the same kind differ up to 2x in speed, so every benchmark table carries
``calib_ms``: the training-step time of one fixed reference network (the from-scratch light
U-Net at 96 px, batch 16) measured in the same process. Compare seconds within one table, or
scale by ``calib_ms``. The tables live in ``benchmarks/`` (committed: they are measurements,
not data) and notebooks 02 and 04 show them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from busi_utils.core.config import repo_root
from busi_utils.core.files import atomic_write_text
from busi_utils.evaluation.bootstrap import ci_text
from busi_utils.stage1.segmentation import DiceBCELoss, LightUNet

#: The reference point of the issue that set the budgets: 17.9 ms per image on its machine.
REFERENCE_CALIB_MS = 17.9


def benchmarks_dir() -> Path:
    return repo_root() / "benchmarks"


def parse_spec(spec: str) -> dict:
    """``"arch=lite0,size=96,epochs=11"`` -> ``{"arch": "lite0", "size": 96, "epochs": 11}``
    (ints, floats and true/false converted)."""
    out: dict = {}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        if not _:
            raise ValueError(f"{spec!r}: expected key=value pairs separated by commas")
        low = value.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
        else:
            for cast in (int, float, str):
                try:
                    out[key] = cast(value)
                    break
                except ValueError:
                    continue
    return out


def calibration_ms(repeats: int = 5) -> float:
    """Training-step milliseconds per image of the reference network on this machine."""
    import torch  # torch: loaded where used (slow import)

    torch.manual_seed(0)
    model = LightUNet(base=12)
    opt = torch.optim.AdamW(model.parameters())
    x, y = torch.randn(16, 1, 96, 96), (torch.rand(16, 1, 96, 96) > 0.5).float()
    loss_fn = DiceBCELoss()
    for k in range(repeats + 2):
        if k == 2:
            start = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return round((time.perf_counter() - start) / repeats / 16 * 1000, 1)


def machine_info() -> dict:
    """What a timing needs beside it: date, cores, threads, and the calibration."""
    import torch  # torch: loaded where used (slow import)

    return {
        "date": date.today().isoformat(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "calib_ms": calibration_ms(),
    }


def append_rows(path: Path, rows: list[dict], key: list[str]) -> pd.DataFrame:
    """Add ``rows`` to the CSV at ``path``, replacing earlier rows with the same ``key`` values;
    written atomically."""
    old = pd.read_csv(path) if path.exists() else pd.DataFrame()
    new = pd.DataFrame(rows)
    if len(old) and all(k in old for k in key):
        drop = old[key].astype(str).apply(tuple, axis=1).isin(set(new[key].astype(str).apply(tuple, axis=1)))
        old = old[~drop]
    table = pd.concat([old, new], ignore_index=True)
    atomic_write_text(path, table.to_csv(index=False))
    return table


def arg_parser(doc: str):
    """The arguments every benchmark script shares: run folder, seed, output folder, specs."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument(
        "--run-dir",
        required=True,
        help="a run folder of the cpu profile (notebook 01 and, for the classifier, 03 done)",
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=str(benchmarks_dir()), help="folder for the CSV tables (default benchmarks/)")
    ap.add_argument("specs", nargs="+", help="key=value,... recipe overrides; 'name' labels the row")
    return ap


def candidates(specs: list[str], defaults: dict):
    """``(name, recipe)`` for each spec: the defaults with the spec's overrides."""
    for spec in specs:
        recipe = dict(defaults, **parse_spec(spec))
        yield recipe.pop("name", spec), recipe


def already_done(done: pd.DataFrame | None, **key) -> bool:
    """True when the table ``done`` (or None: nothing yet) has a row with every ``key`` value:
    that very run is benchmarked, so a resumed benchmark skips it."""
    if done is None:
        return False
    match = pd.Series(True, index=done.index)
    for column, value in key.items():
        match &= done[column] == value
    return bool(match.any())


def record(out: Path, table: str, row: dict, history: pd.DataFrame, key: list[str]) -> None:
    """Print a result row and add it (and its per-epoch history) to ``out/<table>.csv`` and
    ``out/<table>_history.csv``."""
    print(row, flush=True)
    append_rows(Path(out) / f"{table}.csv", [row], key)
    append_rows(
        Path(out) / f"{table}_history.csv",
        history.assign(**{k: row[k] for k in key}).to_dict("records"),
        key + ["epoch"],
    )


def matching_candidate(table: pd.DataFrame, recipe: dict) -> pd.Series | None:
    """The benchmark row whose recorded recipe equals ``recipe`` on every key the row records
    (the ``recipe`` column of the per-run table, carried into the summary as ``recipe``); of
    several, the one that records the most keys (a row benchmarked before a key existed matches
    on fewer, and says less about this recipe)."""
    if "recipe" not in table:
        return None
    best, n_keys = None, 0
    for _, row in table.iterrows():
        spec = parse_spec(str(row["recipe"]))
        if (
            spec
            and all(recipe.get(k) == v or str(recipe.get(k)) == str(v) for k, v in spec.items())
            and len(spec) > n_keys
        ):
            best, n_keys = row, len(spec)
    return best


def gap_interval(a: pd.Series, b: pd.Series, mean: str, sd: str) -> tuple[float, float, float]:
    """The gap ``a - b`` between two candidates' mean scores and its 95% interval over their runs
    (standard error of the difference, Welch's t): runs differ by fold and seed, so a gap is only
    a finding when this interval excludes 0."""
    var_a, var_b = a[sd] ** 2 / a["runs"], b[sd] ** 2 / b["runs"]
    dof = (var_a + var_b) ** 2 / (var_a**2 / (a["runs"] - 1) + var_b**2 / (b["runs"] - 1))
    gap, half = a[mean] - b[mean], stats.t.ppf(0.975, dof) * np.sqrt(var_a + var_b)
    return gap, gap - half, gap + half


def gap_words(low: float, high: float) -> str:
    """A gap's verdict from its 95% interval, as every benchmark line words it."""
    return "the runs cannot separate them" if low <= 0 <= high else "a real gap"


def verdict(table: pd.DataFrame, recipe: dict, metric: str = "valid_dice") -> str:
    """Where the profile's recipe stands in a benchmark summary (``<metric>_mean`` / ``_sd`` per
    candidate): the best candidate with two runs or more, and the 95% interval of the gap between
    the two (no rank: a place in a list of means is a verdict without an interval).
    Printed by the chapters, so that no sentence about the chosen model is written by hand."""
    mean, sd = f"{metric}_mean", f"{metric}_sd"
    ranked = table.sort_values(mean, ascending=False).reset_index(drop=True)
    lines = [
        f"{row['name']} {row[mean]:.3f}: one run, no spread, cannot be compared"
        for _, row in ranked.iterrows()
        if row["runs"] < 2
    ]
    comparable = ranked[ranked["runs"] >= 2].reset_index(drop=True)
    if comparable.empty:
        return "\n".join(lines + ["no candidate has two runs: nothing can be compared"])
    best = comparable.iloc[0]
    lines.append(
        f"best mean over 2+ runs: {best['name']} {best[mean]:.3f} ± {best[sd]:.3f} (SD over "
        f"{int(best['runs'])} runs), {best['s_per_epoch']:.1f} s/epoch"
    )
    mine = matching_candidate(ranked, recipe)
    if mine is None:
        return "\n".join(lines + ["the profile's recipe is not among the benchmarked candidates"])
    lines.append(
        f"the profile trains {mine['name']}: {mine[mean]:.3f} ± {mine[sd]:.3f} over {int(mine['runs'])} "
        f"runs, {mine['s_per_epoch']:.1f} s/epoch"
    )
    if mine["runs"] < 2:
        return "\n".join(lines)
    other = best if mine["name"] != best["name"] else (comparable.iloc[1] if len(comparable) > 1 else None)
    if other is not None:
        gap, low, high = gap_interval(mine, other, mean, sd)
        lines.append(
            f"{mine['name']} minus {other['name']}: {ci_text(gap, [low, high], signed=True)}: {gap_words(low, high)}"
        )
    return "\n".join(lines)


def paired_gaps(runs: pd.DataFrame, a: str, b: str, metrics: list[str], by: list[str]) -> list[str]:
    """Candidate ``a`` minus ``b`` in a per-run table (``name`` and ``metrics`` columns), paired on
    the runs they share (``by``: e.g. view, fold and seed, so that a fold's difficulty cancels):
    per metric the mean paired difference and its 95% t interval over the pairs."""
    pairs = runs[runs["name"] == a].merge(runs[runs["name"] == b], on=by, suffixes=("_a", "_b"))
    lines = []
    for m in metrics:
        d = (pairs[f"{m}_a"] - pairs[f"{m}_b"]).dropna().to_numpy()
        if len(d) < 2:
            lines.append(f"{m}: {len(d)} paired run(s), no interval")
            continue
        half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
        low, high = d.mean() - half, d.mean() + half
        lines.append(
            f"{m}, {a} minus {b}: {ci_text(d.mean(), [low, high], signed=True)} over {len(d)} paired runs: "
            + gap_words(low, high)
        )
    return lines
