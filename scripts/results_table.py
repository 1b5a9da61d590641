"""Write the README's results table from a run's metrics.json (nothing typed by hand).

    python scripts/results_table.py runs/cpu/metrics.json [--readme README.md]

Replaces the text between ``<!-- results:start -->`` and ``<!-- results:end -->``, and the
stage-1 benchmark table (``benchmarks/segmentation.csv``) between ``<!-- seg-benchmark:start -->``
and ``<!-- seg-benchmark:end -->``, the stage-2 recipes (``benchmarks/classifier.csv``, block
``cls-benchmark``) and the method's seed spread (``benchmarks/seed_spread.csv``, block
``seed-spread``), and copies the run's metric plots (notebook 05 writes them to the run folder's
``figures/``) into the repository's ``figures/``, which the README shows. A run on synthetic data or
in the quick profile is refused, figures included: its numbers are software tests, not results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from datetime import date
from pathlib import Path

import pandas as pd

from busi_utils.evaluation import seeds as seeds_record
from busi_utils.evaluation import site_views

START, END = "<!-- results:start -->", "<!-- results:end -->"
VARIANTS = [
    "method",
    "image+pred_mask",
    "lesion_crop",
    "image_only",
    "shape_alone",
    "image+pred_mask (one member)",
    "image+gt_mask",
]
ROLE = {
    "method": "**the method, as the Predictor ships it**: both views' ensembles fused, calibrated",
    "image+pred_mask": "whole scan + mask channel (ensemble)",
    "lesion_crop": "lesion view placed by the mask (ensemble)",
    "image_only": "baseline: no mask (ensemble)",
    "shape_alone": "the mask's shape descriptors alone (no pixel)",
    "image+pred_mask (one member)": "one model of the whole-scan view (fold 0)",
    "image+gt_mask": "leaky upper bound (GT mask at test time, one model)",
}


def _pct(value) -> str:
    """A share as a percentage, a dash where the candidate was benchmarked before the column existed."""
    return "-" if value != value else f"{value:.0%}"


def seg_benchmark_table(csv: Path) -> str:
    """The stage-1 candidates, best mean first: held-out Dice mean ± SD over folds x seeds, what
    each paints on normal scans at home and on the external set's development patients, time."""
    import pandas as pd

    t = pd.read_csv(csv).sort_values("valid_dice_mean", ascending=False)
    for col in (
        "valid_normals_painted_mean",
        "dev_normals_painted_mean",
        "dev_lesions_unpainted_mean",
        "dev_dice_mean",
    ):
        t[col] = t[col] if col in t else float("nan")
    lines = [
        "| candidate | size | epochs | runs (folds x seeds) | held-out Dice, mean ± SD | normal scans painted (BUSI) "
        "| BUS-UCLM development patients: Dice / normal scans painted / lesions unpainted | s/epoch | s/model | calib_ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in t.itertuples():
        away = (
            "-"
            if r.dev_dice_mean != r.dev_dice_mean
            else f"{r.dev_dice_mean:.3f} / {_pct(r.dev_normals_painted_mean)} / {_pct(r.dev_lesions_unpainted_mean)}"
        )
        lines.append(
            f"| `{r.name}` | {r.size} | {r.epochs} | {r.runs} ({r.folds} x {r.seeds}) | {r.valid_dice_mean:.3f} ± {r.valid_dice_sd:.3f} "
            f"| {_pct(r.valid_normals_painted_mean)} | {away} | {r.s_per_epoch:.1f} | {r.s_per_model:.0f} | {r.calib_ms:.1f} |"
        )
    return "\n".join(lines)


def decision_table(csv: Path) -> str:
    """The decision rules (``benchmarks/decision.csv``): BUSI out-of-fold macro-F1 and the
    development patients' figures, mean ± SD over the runs (stage-1 recipes and seeds) benchmarked."""
    import pandas as pd

    t = pd.read_csv(csv)
    lines = []
    for run, part in t.groupby("run", sort=False):
        r0 = part.iloc[0]
        lines += [
            f"Run `{run}` ({r0['n_oof']} BUSI out-of-fold images; {r0['n_dev']} scans of {r0['n_dev_patients']} "
            f"development patients; {r0['date']}):",
            "",
            "| rule | BUSI out-of-fold macro-F1 | development macro-F1 | lesions called normal | normal scans called a lesion | benign-vs-malignant AUC |",
            "|---|---|---|---|---|---|",
        ]
        for r in part.itertuples():
            cells = [
                f"{getattr(r, f'dev_{k}'):.3f} ({getattr(r, f'dev_{k}_ci95').replace('-', '–')})"
                for k in ("macro_f1", "lesions_called_normal", "normals_called_lesion", "benign_malignant_auc")
            ]
            lines.append(f"| `{r.rule}` | {r.busi_oof_macro_f1:.3f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def pipeline_seeds_table(csv: Path) -> str:
    """The whole pipeline (stage 1 and stage 2) over seeds: one row per run, then mean ± SD."""
    import pandas as pd

    t = pd.read_csv(csv).sort_values("seed")
    cols = {
        "busi_macro_f1": "BUSI test macro-F1",
        "busi_dice": "BUSI test Dice",
        "ext_macro_f1": "BUS-UCLM macro-F1",
        "ext_lesions_called_normal": "lesions called normal",
        "ext_normals_called_lesion": "normal scans called a lesion",
        "ext_benign_malignant_auc": "benign-vs-malignant AUC",
        "ext_dice": "BUS-UCLM Dice",
    }
    cols = {k: v for k, v in cols.items() if k in t}
    lines = ["| seed | " + " | ".join(cols.values()) + " |", "|---" * (len(cols) + 1) + "|"]
    for _, r in t.iterrows():
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r[k]:.3f}" for k in cols) + " |")
    if len(t) > 1:
        lines.append("| mean ± SD | " + " | ".join(f"{t[k].mean():.3f} ± {t[k].std():.3f}" for k in cols) + " |")
    return "\n".join(lines) + (
        f"\n\n{len(t)} run{'s' if len(t) > 1 else ''} of the whole course (each seed its own BUSI split, stage 1 and stage 2); BUS-UCLM "
        f"columns on the same {int(t['ext_patients'].iloc[0])} evaluation patients ({int(t['ext_images'].iloc[0])} scans); "
        f"{t['cpu'].iloc[0]}, calib_ms {t['calib_ms'].max():.1f}."
    )


def cls_benchmark_table(csv: Path) -> str:
    """The stage-2 recipes, best mean first: held-out macro-F1 of the kept model (mean ± SD over
    folds x seeds), the flattering best-epoch score beside it, where benchmarked the development
    patients' macro-F1 and benign-vs-malignant AUC (mean ± SD), and the time."""
    import pandas as pd

    t = pd.read_csv(csv).sort_values("valid_macro_f1_mean", ascending=False)
    lines = [
        "| recipe | input | runs (folds x seeds) | held-out macro-F1 of the kept model, mean ± SD | best epoch's macro-F1 (chosen on the fold it scores) | AUC | BUS-UCLM development patients: macro-F1 / benign-vs-malignant AUC | s/epoch (fastest run) | calib_ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in t.to_dict("records"):
        sd = lambda c: f"{r[c]:.3f}" if pd.notna(r.get(c)) else "-"  # noqa: E731
        away = (
            f"{r['dev_macro_f1_mean']:.3f} ± {sd('dev_macro_f1_sd')} / {r['dev_bm_auc_mean']:.3f} ± {sd('dev_bm_auc_sd')}"
            if pd.notna(r.get("dev_bm_auc_mean"))
            else "-"
        )
        lines.append(
            f"| `{r['name']}` | `{r['variant']}` | {r['runs']} ({r['folds']} x {r['seeds']}) | "
            f"{r['valid_macro_f1_mean']:.3f} ± {sd('valid_macro_f1_sd')} | {r['best_epoch_macro_f1_mean']:.3f} | "
            f"{r['valid_auc_mean']:.3f} | {away} | {r['s_per_epoch']:.1f} | {r['calib_ms']:.1f} |"
        )
    return "\n".join(lines)


def seed_spread_table(csv: Path, profile: str = "cpu") -> str:
    """The shipped method and its parts over training seeds (``scripts/seed_spread.py``): test
    metrics, mean ± SD and range, and in how many seeds the method beat image-only."""

    t, ext_present = seeds_record.read_record(csv, profile)
    seeds = sorted(t["seed"].unique())
    wide = t.pivot(index="seed", columns="variant", values="macro_f1")
    ahead = int((wide["method"] > wide["image_only"]).sum()) if {"method", "image_only"} <= set(wide) else 0
    ext = [k for k in EXTERNAL_COLUMNS if k in ext_present]  # every seed scored on the external set
    where = f" on {', '.join(t['external_set'].unique())}" if ext and "external_set" in t else ""
    lines = [
        f"Seeds {', '.join(map(str, seeds))} ({t['members'].iloc[0]} members per view, the run's split and masks; "
        f"calib_ms {t['calib_ms'].max():.1f}). The method beat image-only on test macro-F1 in {ahead} of {len(seeds)} seeds."
        + (
            f" External columns: the same members{where}, pipeline unchanged, reported and never used to choose."
            if ext
            else ""
        ),
        "",
        "| classifier | test accuracy, mean ± SD (range) | test macro-F1, mean ± SD (range) | malignant recall | AUC (OvR) | fused rule chosen (per seed) |"
        + "".join(f" {EXTERNAL_COLUMNS[k]} |" for k in ext),
        "|---|---|---|---|---|---|" + "---|" * len(ext),
    ]

    def cell(g, k):
        return f"{g[k].mean():.3f} ± {g[k].std():.3f} ({g[k].min():.3f}–{g[k].max():.3f})"

    for variant, g in t.groupby("variant", sort=False):
        rules = ", ".join(g.sort_values("seed")["fusion"]) if variant == "method" else "-"
        lines.append(
            f"| `{variant}` | {cell(g, 'accuracy')} | {cell(g, 'macro_f1')} | {g['malignant_recall'].mean():.3f} "
            f"| {g['auc_ovr'].mean():.3f} | {rules} |" + "".join(f" {cell(g, k)} |" for k in ext)
        )
    return "\n".join(lines)


EXTERNAL_COLUMNS = {  # the seed study's external columns the table shows, as it heads them
    seeds_record.external_column("macro_f1"): "external macro-F1, mean ± SD (range)",
    seeds_record.external_column("benign_malignant_auc"): "external benign-vs-malignant AUC, mean ± SD (range)",
    seeds_record.external_column("lesions_called_normal"): "external lesions called normal, mean ± SD (range)",
}


def replace_block(text: str, name: str, body: str) -> str:
    """``text`` with the lines between ``<!-- name:start -->`` and ``<!-- name:end -->`` replaced."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        raise SystemExit(f"README markers {start} / {end} not found")
    return text[: text.index(start) + len(start)] + "\n" + body + "\n" + text[text.index(end) :]


def fmt(value: float, ci: list[float] | None = None) -> str:
    return f"{value:.3f}" + (f" ({ci[0]:.2f}–{ci[1]:.2f})" if ci and None not in ci else "")


def machine_line(m: dict, machine: str | None) -> str:
    """``--machine`` when given, else the machine as ``metrics.json`` recorded it (CPU, GPU,
    instruction set, threads, reproducible mode), else what this Python sees."""
    rec = m.get("machine")
    if machine or not rec:
        return machine or f"{platform.machine()}, {os.cpu_count()} CPU cores"
    mode = "reproducible mode" if rec["reproducible"] else "reproducible mode off"
    gpu = f"GPU {rec['gpu']}" if rec.get("gpu") else "no GPU"
    return f"{rec['cpu']} ({rec['cpus']} cores), {gpu}, {mode}: {rec['isa_in_use']}, {rec['threads']} threads"


def table(m: dict, when: str, machine: str) -> str:
    seg = m["segmentation"]
    lines = [
        f"Run: profile `{m['profile']}`, seed {m['seed']}, data `{m['data']['kind']}` (hash {m['data'].get('dataset_hash', '?')}), "
        f"{when}, {machine_line(m, machine)}; whole course {m['timing']['course_seconds'] / 60:.0f} min. "
        f"Test split: {m['split']['test']} images, touched once. 95% bootstrap intervals in brackets.",
        "",
        f"**Segmentation** (test lesion images, mean of the {len(seg.get('members_dice', [])) or 'K'} fold U-Nets): "
        f"Dice {fmt(seg['dice_mean'], seg['dice_ci95'])}, IoU {seg['iou_mean']:.3f}"
        + (
            f" (each fold U-Net alone: {min(seg['members_dice']):.3f}-{max(seg['members_dice']):.3f})"
            if seg.get("members_dice")
            else ""
        )
        + f"; false-positive area on normal test scans {seg['normal_fp_area_mean']:.1%}.",
        "",
        "| classifier | role | accuracy | macro-F1 | malignant recall | malignant specificity | AUC (OvR) | benign-vs-malignant AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        c = m["classification"][v]
        cells = [
            fmt(c[k], c.get(f"{k}_ci95"))
            for k in (
                "accuracy",
                "macro_f1",
                "malignant_recall",
                "malignant_specificity",
                "auc_ovr",
                "benign_malignant_auc",
            )
        ]
        lines.append(f"| `{v}` | {ROLE[v]} | " + " | ".join(cells) + " |")
    lines += external_lines(m)
    worth = m.get("mask_worth")
    if worth:
        paired = worth["paired"]
        cells = [
            f"{k.replace('_', ' ')} {paired[k]['value']:+.3f} ({paired[k]['ci95'][0]:+.2f} to {paired[k]['ci95'][1]:+.2f})"
            for k in ("accuracy", "macro_f1", "malignant_recall", "auc_ovr")
        ]
        seeds = worth["seeds"]
        lines += [
            "",
            "**Is the mask worth it?** Method minus image-only on the same test images (paired bootstrap 95% interval): "
            + "; ".join(cells)
            + f". Member by member ({seeds['n_seeds']} pairs trained on the same folds with the same seed), "
            f"the macro-F1 difference is {seeds['macro_f1_diff_mean']:+.3f} ± {seeds['macro_f1_diff_std']:.3f} (mean ± SD), "
            f"accuracy {seeds['accuracy_diff_mean']:+.3f} ± {seeds['accuracy_diff_std']:.3f}. {worth['verdict']}",
        ]
    leak = m.get("leakage", {})
    if "random_split" in leak:
        r = leak["random_split"]
        lines += [
            "",
            f"**Leakage lesson:** on a random, ungrouped split {r['test_with_copy_in_train']} of {r['n_test']} test images have a copy in "
            f"training, and image-only accuracy reads {r['accuracy']:.3f} (grouped split: {leak['grouped_split']['accuracy']:.3f}). "
            f"The ground-truth-mask model scores {leak['gt_mask_model']['with_gt_masks']:.3f} with hand-drawn masks and "
            f"{leak['gt_mask_model']['with_predicted_masks']:.3f} with the U-Net's.",
        ]
    cal = m.get("calibration")
    if cal:
        lines += [
            "",
            f"**Calibration** (method): ECE {cal['ece_before']:.3f} → {cal['ece_after']:.3f} after temperature scaling (T = {cal['temperature']:.2f}, fitted on the training pool's out-of-fold answers).",
        ]
    lines += [
        "",
        "Figures (drawn by notebook 05 into the run folder, copied here by `scripts/results_table.py`, which "
        "`make course` calls, from a real-data run of the cpu or gpu profile only): `figures/confusion_matrices.png`, `figures/roc_curves.png`, `figures/reliability.png`, "
        "`figures/segmentation_dice.png`, `figures/referral.png`, `figures/mask_worth.png`.",
    ]
    return "\n".join(lines)


def external_lines(m: dict) -> list[str]:
    """The external block: BUS-UCLM's evaluation patients (the whole set beside them, labelled)."""
    ext, seg, lines = m.get("external", {}).get("bus_uclm"), m["segmentation"], []
    if not ext:
        return lines
    who = (
        f"its **evaluation patients**: {ext['n_images']} scans of {ext['n_patients']} patients, never used for a choice"
        if ext.get("patients") == "evaluation"
        else f"{ext['n_images']} images of {ext['n_patients']} patients"
    )
    lines += [
        "",
        f"**External validation** (BUS-UCLM, another hospital and scanner; {who}; "
        "pipeline unchanged; 95% intervals resample patients): segmentation Dice "
        f"{fmt(ext['dice_mean'], ext['dice_ci95'])} (BUSI test {seg['dice_mean']:.3f}).",
        "",
        "| classifier | BUSI test macro-F1 | BUS-UCLM macro-F1 | benign-vs-malignant AUC | malignant recall "
        "| lesions called normal | normal scans called a lesion |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in [v for v in VARIANTS if v in ext["variants"]]:
        e, b = ext["variants"][v], m["classification"][v]
        lines.append(
            f"| `{v}` | {b['macro_f1']:.3f} | "
            + " | ".join(
                fmt(e[k], e.get(f"{k}_ci95")) if k in e else "-"
                for k in (
                    "macro_f1",
                    "benign_malignant_auc",
                    "malignant_recall",
                    "lesions_called_normal",
                    "normals_called_lesion",
                )
            )
            + " |"
        )
    whole = ext.get("whole_set")
    if whole:
        w = whole["variants"]["method"]
        lines += [
            "",
            f"The whole set ({whole['n_images']} scans of {whole['n_patients']} patients, development patients "
            f"included, so not a clean test): method macro-F1 {fmt(w['macro_f1'], w.get('macro_f1_ci95'))}, "
            f"Dice {fmt(whole['dice_mean'], whole['dice_ci95'])}.",
        ]
    return lines


def adaptation_lines(m: dict) -> str:
    """Chapter 8's block: the label-free adaptation against the unchanged pipeline on BUS-UCLM's
    evaluation patients, the learning curve over labelled development patients, and stage 1's
    fine-tuning study, all from the run's ``metrics.json``."""
    a = m.get("adaptation", {}).get("bus_uclm")
    if not a:
        return "Chapter 8 has not run on this run folder."
    keys = ("macro_f1", "lesions_called_normal", "normals_called_lesion", "benign_malignant_auc")
    lines = [
        f"BUS-UCLM's evaluation patients ({'whole set' if a.get('patients') != 'evaluation' else 'never used for a choice'}); "
        f"95% intervals resample patients. Domain classifier (BUSI vs the new site, gray-level histograms): held-out AUC {fmt(a['domain_auc'], a.get('domain_auc_ci95'))}.",
        "",
        "| pipeline | macro-F1 | lesions called normal | normal scans called a lesion | benign-vs-malignant AUC |",
        "|---|---|---|---|---|",
    ]
    method = a["label_free"]["method"]
    for name, r in (
        ("unchanged (chapter 7)", a["unchanged"]),
        (f"label-free: batch norm of the {method['batchnorm']}, prior {method['prior']}", a["label_free"]),
    ):
        lines.append(f"| {name} | " + " | ".join(fmt(r[k], r.get(f"{k}_ci95")) for k in keys) + " |")
    d = a["paired_macro_f1"]
    lines += [
        "",
        f"Paired difference in macro-F1 (label-free minus unchanged, same scans): {d['value']:+.3f} "
        f"({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}).",
        "",
        "The decision refitted on k labelled development patients (where a lesion begins, the temperature, the referral cutoff; "
        "Dice and the benign-vs-malignant AUC cannot move), scored on the evaluation patients:",
        "",
        "| labelled development patients k | fits | scans (mean) | macro-F1, mean ± SD | lesions called normal | normal scans called a lesion |",
        "|---|---|---|---|---|---|",
    ]
    curve = pd.DataFrame(a["learning_curve"])
    for k, g in curve.groupby("k"):
        sd = lambda c: f"{g[c].mean():.3f} ± {g[c].std():.3f}" if len(g) > 1 else f"{g[c].mean():.3f}"  # noqa: E731
        lines.append(
            f"| {k} | {len(g)} | {g['scans'].mean():.0f} | {sd('macro_f1')} | {sd('lesions_called_normal')} | "
            f"{sd('normals_called_lesion')} |"
        )
    study = site_views.finetune_gains(pd.DataFrame(a.get("finetune_stage1", [])))
    if len(study):
        names = dict(site_views.FINETUNE_GAINS)
        stats = study.groupby("layers", sort=False)[[c for c in names if c in study]].agg(["mean", "std"])
        draws = study.groupby("layers", sort=False).size()
        lines += [
            "",
            "Stage 1 (one fold U-Net) fine-tuned on labelled development patients, mean gain ± SD over draws: "
            "Dice on the other development patients' lesions, presence AUC on all their scans, and Dice on "
            "BUSI lesion scans the U-Net never trained on (`+home`: its BUSI training scans rehearsed in every batch): "
            + "; ".join(
                f"{lay} "
                + ", ".join(
                    f"{n} {r[(c, 'mean')]:+.3f} ± {r[(c, 'std')]:.3f}" for c, n in names.items() if (c, "mean") in r
                )
                + f" ({draws[lay]} draws)"
                for lay, r in stats.iterrows()
            )
            + ".",
        ]
    return "\n".join(lines)


def publish_figures(run_figures: Path, dest: Path) -> list[str]:
    """Copy every PNG of a run's ``figures/`` into ``dest`` (each through
    :func:`busi_utils.core.files.atomic_path`, so a README figure is never half-written); returns
    the names copied."""
    from busi_utils.core.files import atomic_path  # the project's one temp-file + rename helper

    names = []
    for png in sorted(Path(run_figures).glob("*.png")):
        with atomic_path(dest / png.name) as tmp:
            shutil.copyfile(png, tmp)
        names.append(png.name)
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path)
    ap.add_argument("--readme", type=Path, default=Path(__file__).resolve().parent.parent / "README.md")
    ap.add_argument(
        "--machine", default=None, help="describe the machine (default: as the run's results file records it)"
    )
    args = ap.parse_args()
    if not args.metrics.exists():
        print(f"{args.metrics}: not found (run the course first)", file=sys.stderr)
        return 1
    m = json.loads(args.metrics.read_text())
    if m["data"]["kind"] == "synthetic":
        print(
            f"{args.metrics}: a synthetic-data run; the README shows results on BUSI only. Table not written.",
            file=sys.stderr,
        )
        return 0
    if m["profile"] == "quick":
        print(
            f"{args.metrics}: a quick-profile run (a test of the software); the README shows the cpu or gpu profile. Table not written.",
            file=sys.stderr,
        )
        return 0
    text = args.readme.read_text()
    if START not in text or END not in text:
        print(f"{args.readme}: markers {START} / {END} not found", file=sys.stderr)
        return 1
    when = date.fromtimestamp(args.metrics.stat().st_mtime).isoformat()
    new = replace_block(text, "results", table(m, when, args.machine))
    bench = args.readme.parent / "benchmarks" / "segmentation.csv"
    if bench.exists():
        new = replace_block(new, "seg-benchmark", seg_benchmark_table(bench))
    cls_bench = args.readme.parent / "benchmarks" / "classifier.csv"
    if cls_bench.exists() and "<!-- cls-benchmark:start -->" in new:
        new = replace_block(new, "cls-benchmark", cls_benchmark_table(cls_bench))
    spread = args.readme.parent / "benchmarks" / "seed_spread.csv"
    if spread.exists() and "<!-- seed-spread:start -->" in new:
        new = replace_block(new, "seed-spread", seed_spread_table(spread, m["profile"]))
    for block, name, render in (
        ("decision-benchmark", "decision.csv", decision_table),
        ("pipeline-seeds", "pipeline_seeds.csv", pipeline_seeds_table),
    ):
        csv = args.readme.parent / "benchmarks" / name
        if csv.exists() and f"<!-- {block}:start -->" in new:
            new = replace_block(new, block, render(csv))
    if "<!-- adaptation:start -->" in new:
        new = replace_block(new, "adaptation", adaptation_lines(m))
    args.readme.write_text(new)
    print(f"README results table written from {args.metrics}")
    copied = publish_figures(args.metrics.parent / "figures", args.readme.parent / "figures")
    print(f"figures/: {len(copied)} plots copied from {args.metrics.parent / 'figures'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
