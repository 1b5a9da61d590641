"""Tables, figures and sentences of chapters 7 and 8 (another hospital: validation, then adaptation).

The chapters show one idea per cell; the plotting and table assembly a reader need not read lives
here, each function named for what it shows. Nothing here fits or scores anything new: every
number comes from the report dictionaries and tables the chapters computed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from busi_utils.core import viz
from busi_utils.core.config import CLASSES
from busi_utils.evaluation.bootstrap import ci_text, score_text

SYNTHETIC = (
    "<div style='border:4px solid #c00;padding:8px'><b>⚠ SYNTHETIC EXTERNAL SET.</b> BUS-UCLM was not found "
    "(set <code>BUS_UCLM_ROOT</code>); the numbers below test the software, they are not results.</div>"
)


def synthetic_banner(kind: str) -> str:
    """A red warning (HTML) when the external set is the synthetic stand-in, else an empty string:
    a reader must never mistake a software test for a result."""
    return SYNTHETIC if kind == "synthetic" else ""


def interval_table(named: Mapping[str, Mapping], keys: Sequence[str]) -> pd.DataFrame:
    """One column per flat report of ``named``, one row per key, each cell ``value (95% interval ...)``."""
    return pd.DataFrame({name: {k: score_text(scores, k) for k in keys} for name, scores in named.items()})


def travel_lines(home: Mapping, away: Mapping, keys: Sequence[str]) -> list[str]:
    """Per key, a score at home and away with their intervals, and what two unpaired intervals
    allow: lower or higher away only when they do not overlap, else one run cannot tell."""
    lines = []
    for key in keys:
        (home_lo, home_hi), (away_lo, away_hi) = home[f"{key}_ci95"], away[f"{key}_ci95"]
        verdict = "lower away" if away_hi < home_lo else "higher away" if away_lo > home_hi else "cannot tell"
        lines.append(f"{key}: BUSI test {score_text(home, key)} -> BUS-UCLM {score_text(away, key)}: {verdict}")
    return lines


def gray_levels(busi_images: np.ndarray, site_images: np.ndarray, stats: pd.DataFrame) -> None:
    """Two panels: the pooled gray-level histograms of both sets (log scale, so the dark
    background does not hide the rest) and each image's mean gray level, per set."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
    for name, imgs in (("BUSI (train)", busi_images), ("BUS-UCLM", site_images)):
        axes[0].hist(imgs.ravel(), bins=64, density=True, histtype="step", lw=1.5, label=name)
    axes[0].set(xlabel="gray level", ylabel="density", title="Gray levels", yscale="log")
    axes[0].legend()
    sns.kdeplot(data=stats, x="mean", hue="dataset", ax=axes[1], common_norm=False)
    axes[1].set(title="Mean gray level per image")


def macro_f1_bars(side: pd.DataFrame) -> None:
    """Each variant's macro-F1 at home (BUSI test) and on the external set, side by side."""
    ax = side["macro_f1"].unstack().reindex(columns=["BUSI test", "external"]).plot.bar(figsize=(9, 3.4), rot=0)
    ax.set(ylabel="macro-F1", ylim=(0, 1), title="Which input travels? macro-F1, BUSI test vs BUS-UCLM", xlabel="")


def seed_record_line(spread: pd.DataFrame) -> str:
    """Where the seed study's record comes from: seeds, members, external set, date, machine."""
    seeds = ", ".join(map(str, sorted(spread["seed"].unique())))
    return (
        f"{spread['seed'].nunique()} training seeds ({seeds}), {spread['members'].iloc[0]} members per view, "
        f"external set {', '.join(spread['external_set'].unique())}; made {spread['date'].max()} on "
        f"{spread['machine'].iloc[0]}, {spread['cpus'].iloc[0]} cores, calib_ms {spread['calib_ms'].max():.1f}"
    )


def referral_line(referral: Mapping) -> str:
    """The referral rule's outcome in one sentence: the share of scans sent to a human, and the
    share of all errors that those scans hold. It compares no accuracies: two shares without
    intervals (often a few scans on one side) cannot say which side was more accurate."""
    return (
        f"referral at BUSI's cutoff {referral['entropy_cutoff']:.3f}: {referral['referred_fraction']:.0%} of the "
        f"scans referred; {referral['errors_caught']:.0%} of the errors go to a human"
    )


def worst_grid(worst: pd.DataFrame, images: np.ndarray, lesion_probs: np.ndarray) -> None:
    """Each of the worst cases twice: the scan with its true label, and the predicted mask over it
    with the method's answer and confidence (row ``k`` of ``worst`` is scan ``k`` of ``images``)."""
    cells, titles = [], []
    for k, row in worst.iterrows():
        cells += [images[k], viz.overlay(images[k], lesion_probs[k] >= 0.5)]
        titles += [
            f"{row['image_id']} (true {row['true_label']})",
            f"said {row['method:answer']} ({row['confidence']:.2f})",
        ]
    if cells:
        viz.show_grid(cells, titles, ncols=4, size=2.6)


def matching_figure(image: np.ndarray, matched: np.ndarray, reference_cdf: np.ndarray) -> None:
    """One scan before and after histogram matching, and the three cumulative histograms (its own,
    the matched one, BUSI's): matching moves the scan's curve onto BUSI's."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, img, title in zip(axes, (image, matched), ("BUS-UCLM scan", "matched to BUSI")):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set(title=title, xticks=[], yticks=[])
    levels = np.arange(256)
    for img, name in ((image, "scan"), (matched, "matched")):
        axes[2].plot(levels, np.cumsum(np.bincount(img.ravel(), minlength=256)) / img.size, label=name)
    axes[2].plot(levels, reference_cdf, "k--", label="BUSI training")
    axes[2].set(xlabel="gray level", ylabel="share of pixels at or below", title="Cumulative histograms")
    axes[2].legend(fontsize=8)


def adaptation_table(
    reports: Mapping[str, Mapping], keys: Sequence[str], variants=("method", "image_only")
) -> pd.DataFrame:
    """Columns: one per report (e.g. unchanged, histogram matched); rows: Dice, then each
    variant's ``keys``, each as ``value (low-high)``."""
    table = {}
    for name, r in reports.items():
        column = {"dice": ci_text(r["dice_mean"], r["dice_ci95"])}
        column.update({f"{v}:{k}": score_text(r["variants"][v], k) for v in variants for k in keys})
        table[name] = column
    return pd.DataFrame(table)


def external_entry(ext_report: dict, whole: dict, kind: str, split_block: dict, referral: dict, matched: dict) -> dict:
    """Chapter 7's entry of ``metrics.json`` (``external.<key>``): the evaluation patients' report,
    how they were chosen, the whole set beside them, the referral and the histogram-matching record."""
    return {
        **ext_report,
        "kind": kind,
        "patients": "evaluation",
        "patient_split": split_block,
        "whole_set": {k: whole[k] for k in ("n_images", "n_patients", "dice_mean", "dice_ci95", "variants")},
        "referral": referral,
        "adaptation": {"method": "histmatch", **matched},
    }


def class_mix(named_labels: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Each set's share of normal, benign and malignant scans, one column per set."""
    shares = {name: labels.astype(str).value_counts(normalize=True) for name, labels in named_labels.items()}
    return pd.DataFrame(shares).reindex(list(CLASSES))


def stage_losses(run_metrics: Mapping, key: str) -> pd.DataFrame:
    """Stage 1's Dice and the method's macro-F1 and lesions called normal, on BUSI's test split
    (chapter 5) and on the external set's evaluation patients (chapter 7), with their intervals."""
    home = {**run_metrics.get("segmentation", {}), **run_metrics.get("classification", {}).get("method", {})}
    away = run_metrics.get("external", {}).get(key, {})
    away = {**away, **away.get("variants", {}).get("method", {})}
    rows = ("dice_mean", "macro_f1", "lesions_called_normal")
    named = {"BUSI test": home, "new site, evaluation": away}
    return pd.DataFrame({name: {k: score_text(_ci_alias(r, k), k) for k in rows} for name, r in named.items()})


def _ci_alias(scores: Mapping, key: str) -> Mapping:
    """Dice's interval is stored as ``dice_ci95`` beside ``dice_mean``: give it the usual name."""
    return {**scores, "dice_mean_ci95": scores.get("dice_ci95")} if key == "dice_mean" else scores


def evaluation_bars(dev_view: pd.DataFrame, record: Mapping) -> None:
    """Each label-free candidate's macro-F1 on the development patients (where it was chosen)
    and, for those that answered them, on the evaluation patients (for the record)."""
    view = dev_view[["macro_f1"]].rename(columns={"macro_f1": "development (the choice)"})
    ax = view.assign(**{"evaluation (after it)": pd.Series(record, dtype=float)}).plot.barh(figsize=(8, 4.2))
    ax.set(
        xlabel="macro-F1", xlim=(0, 1), title="Label-free candidates: chosen on development; evaluation for the record"
    )


def learning_curve_figure(curve: pd.DataFrame, label_free: Mapping):
    """Macro-F1, lesions called normal and normals called a lesion against the number of labelled
    patients: mean over draws with the draws' SD as bars; on macro-F1, the mean of the fits'
    patient-bootstrap intervals as a band and the label-free pipeline as a dashed line."""
    by_k = curve.groupby("k")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, col in zip(axes, ["macro_f1", "lesions_called_normal", "normals_called_lesion"]):
        ax.errorbar(by_k[col].mean().index, by_k[col].mean(), yerr=by_k[col].std().fillna(0), marker="o", capsize=3)
        ax.set(xscale="log", xlabel="labelled patients k", title=col.replace("_", " "))
    band = by_k["macro_f1_ci95"].apply(lambda cis: np.mean(np.stack(list(cis)), axis=0))
    axes[0].fill_between(band.index, band.str[0], band.str[1], alpha=0.2, label="mean 95% interval")
    axes[0].axhline(label_free["macro_f1"], ls="--", c="gray", label="label-free")
    axes[0].legend(fontsize=8)
    fig.suptitle("How many labelled patients buy how much (evaluation patients; bars: SD over draws)", y=1.03)
    return fig


FINETUNE_GAINS = (("dice", "Dice"), ("auc", "presence AUC"), ("home_dice", "BUSI Dice"))


def finetune_gains(study: pd.DataFrame) -> pd.DataFrame:
    """The study's gains per row (after minus before): ``dice`` and ``auc`` on the other
    development patients, ``home_dice`` at home; a measure the study did not record is left out."""
    if study.empty:  # no study recorded
        return pd.DataFrame(columns=["draw", "layers"])
    num = lambda c: pd.to_numeric(study[c], errors="coerce")  # noqa: E731 (JSON nulls read back as objects)
    gains = {c: num(f"{c}_after") - num(f"{c}_before") for c, _ in FINETUNE_GAINS if f"{c}_after" in study}
    return study[["draw", "layers"]].assign(**{c: g for c, g in gains.items() if g.notna().any()})


def finetune_lines(study: pd.DataFrame) -> list[str]:
    """Per choice of tuned layers, the gains on other development patients in Dice (their lesion
    scans) and in presence AUC (all their scans), and at home in Dice (BUSI scans the U-Net never
    trained on): mean, range and how many draws fell below 0. A few draws describe what happened,
    they give no interval."""
    gains = finetune_gains(study)
    lines = []
    for layers, g in gains.groupby("layers", sort=False):
        parts = []
        for c, name in FINETUNE_GAINS:
            if c in g and g[c].notna().any():
                v = g[c].dropna()
                parts.append(
                    f"{name} {v.mean():+.3f} (range {v.min():+.3f} to {v.max():+.3f}; {int((v < 0).sum())} of {len(v)} below 0)"
                )
        lines.append(f"{layers}, {len(g)} draws, mean gain: " + "; ".join(parts))
    return lines
