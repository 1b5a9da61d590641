"""Metric functions against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from busi_utils.data import splits
from busi_utils.evaluation import metrics, uncertainty

ONE_HOT = {"normal": [1, 0, 0], "benign": [0, 1, 0], "malignant": [0, 0, 1]}


def probs_for(preds):
    return np.array([ONE_HOT[p] for p in preds], dtype=float) * 0.9 + 0.1 / 3


def test_perfect_classifier():
    labels = ["normal", "benign", "malignant", "benign"]
    m = metrics.classification_metrics(labels, probs_for(labels))
    assert m["accuracy"] == m["macro_f1"] == m["malignant_recall"] == m["malignant_specificity"] == m["auc_ovr"] == 1.0


def test_hand_computed_case():
    labels = ["normal", "benign", "malignant", "malignant"]
    preds = ["normal", "malignant", "malignant", "benign"]
    m = metrics.classification_metrics(labels, probs_for(preds))
    assert m["accuracy"] == 0.5
    assert m["malignant_recall"] == 0.5  # one of two malignant found
    assert m["malignant_specificity"] == 0.5  # of normal + benign, one called malignant
    assert m["malignant_precision"] == 0.5 and m["normal_f1"] == 1.0 and m["benign_f1"] == 0.0
    assert m["macro_f1"] == pytest.approx((1.0 + 0.0 + 0.5) / 3)


def test_bootstrap_interval_contains_the_point_estimate():
    rng = np.random.default_rng(0)
    x = rng.normal(0.7, 0.1, 200)
    lo, hi = metrics.bootstrap_ci(lambda idx: x[idx].mean(), len(x), 500, seed=1)
    assert lo < x.mean() < hi and hi - lo < 0.06
    labels = list(rng.choice(["normal", "benign", "malignant"], 120))
    preds = [lab if rng.random() < 0.7 else "benign" for lab in labels]
    res = metrics.classification_with_ci(labels, probs_for(preds), ["accuracy", "macro_f1"], n_boot=300)
    for v in res.values():
        assert v["ci95"][0] <= v["value"] <= v["ci95"][1]


def test_temperature_scaling_lowers_the_ece_of_an_over_confident_classifier():
    rng = np.random.default_rng(0)
    classes = np.array(["normal", "benign", "malignant"])
    y = rng.integers(0, 3, 600)
    correct = rng.random(600) < 0.7
    pred = np.where(correct, y, (y + rng.integers(1, 3, 600)) % 3)
    probs = np.full((600, 3), 0.005)
    probs[np.arange(600), pred] = 0.99  # 99% sure, 70% right
    labels = classes[y]
    t = uncertainty.fit_temperature(labels[:300], probs[:300])
    before = metrics.expected_calibration_error(labels[300:], probs[300:])
    after = metrics.expected_calibration_error(labels[300:], uncertainty.apply_temperature(probs[300:], t))
    assert t > 1 and before > 0.2 and after < before / 2
    assert (uncertainty.apply_temperature(probs, t).argmax(1) == probs.argmax(1)).all()


def test_referral_curve_rises_when_uncertainty_tracks_errors():
    labels = ["benign"] * 10
    preds = ["benign"] * 8 + ["malignant"] * 2
    unc = np.array([0.1] * 8 + [0.9] * 2)
    curve = metrics.referral_curve(labels, probs_for(preds), unc)
    assert curve["accuracy"].iloc[0] == 0.8 and curve["accuracy"].iloc[-1] == 1.0


def test_quick_run_counts_the_copies_a_random_split_leaks_and_its_own_split_has_none(quick_paths):
    """Chapter 5's leakage lesson, from the run's own records (the keys are the schema test's):
    the random split it trained on put copies of test scans into training, and the course's own
    grouped split, read back from its manifest and duplicate groups, puts none there.
    (Claims about what the models learned cannot be tested here: the quick profile's models are
    trained for seconds and barely learn, Dice about 0.2 on the real BUSI.)"""
    import json

    leak = json.loads(quick_paths.metrics_json.read_text())["leakage"]["random_split"]
    assert 0 < leak["test_with_copy_in_train"] <= leak["n_test"], leak
    split, groups = quick_paths.read_split(), quick_paths.read_groups()
    used = split[split["split"] != "unused"]
    train, test = used.query("split == 'train'")["image_id"], used.query("split == 'test'")["image_id"]
    assert splits.copies_across(groups, train, test) == 0
    assert splits.copies_across(groups, used["image_id"], test) == len(test)  # a negative control: test in train


def test_paired_bootstrap_sees_a_consistent_small_gain_that_unpaired_intervals_hide():
    """Model a is right on every image b gets right, plus 6 more: the paired interval is
    strictly positive even though the two unpaired accuracies are close."""
    rng = np.random.default_rng(0)
    labels = list(rng.choice(["normal", "benign", "malignant"], 150))
    b_right = rng.random(150) < 0.7
    a_right = b_right.copy()
    a_right[np.where(~b_right)[0][:6]] = True
    wrong = {"normal": "benign", "benign": "malignant", "malignant": "normal"}
    a = probs_for([lab if ok else wrong[lab] for lab, ok in zip(labels, a_right)])
    b = probs_for([lab if ok else wrong[lab] for lab, ok in zip(labels, b_right)])
    diff = metrics.paired_bootstrap_diff(labels, a, b, ["accuracy"], n_boot=300, seed=0)["accuracy"]
    assert diff["value"] == pytest.approx(6 / 150)
    assert diff["ci95"][0] > 0 and diff["p_a_better"] > 0.97
    same = metrics.paired_bootstrap_diff(labels, b, b, ["accuracy"], n_boot=50)["accuracy"]
    assert same["value"] == 0 and same["ci95"] == [0.0, 0.0]


def test_mask_verdict_says_shown_only_when_interval_and_every_seed_agree():
    import pandas as pd

    shown = {"macro_f1": {"value": 0.05, "ci95": [0.01, 0.09]}}
    unsure = {"macro_f1": {"value": 0.03, "ci95": [-0.02, 0.08]}}
    assert "helps" in metrics.mask_verdict(shown, pd.DataFrame({"macro_f1": [0.04, 0.02, 0.06]}))
    assert "not shown" in metrics.mask_verdict(shown, pd.DataFrame({"macro_f1": [0.04, -0.01, 0.06]}))
    assert "not shown" in metrics.mask_verdict(unsure, pd.DataFrame({"macro_f1": [0.04, 0.02, 0.06]}))
    behind = metrics.mask_verdict(
        {"macro_f1": {"value": -0.02, "ci95": [-0.06, 0.01]}}, pd.DataFrame({"macro_f1": [-0.01, 0.0]})
    )
    assert "not ahead" in behind and "helps" not in behind
    assert "(95% interval -0.060 to +0.010)" in behind  # every verdict carries its interval


def test_interval_text_and_verdict_follow_the_interval():
    from busi_utils.evaluation import report

    assert report.ci_text(0.7123, [0.65, 0.77]) == "0.712 (95% interval 0.650 to 0.770)"
    assert (
        report.ci_text({"value": 0.02, "ci95": [-0.01, 0.05]}, signed=True) == "+0.020 (95% interval -0.010 to +0.050)"
    )
    assert report.ci_text(0.5, [None, None]) == "0.500" and report.ci_text(None) == "-"
    assert report.score_text({"auc": 0.8, "auc_ci95": [0.7, 0.9]}, "auc").endswith("0.700 to 0.900)")
    assert "above zero" in report.interval_verdict([0.01, 0.2], "up", "down")
    assert "cannot tell" in report.interval_verdict([None, 0.2], "up", "down")


def test_benchmark_verdict_names_the_profiles_candidate_and_the_gaps_interval():
    import pandas as pd

    from busi_utils.evaluation import benchmark

    table = pd.DataFrame(
        {
            "name": ["a", "b"],
            "valid_dice_mean": [0.74, 0.72],
            "valid_dice_sd": [0.01, 0.03],
            "runs": [6, 6],
            "s_per_epoch": [14.0, 10.0],
            "recipe": ["arch=lite0,size=96", "arch=light,size=96"],
        }
    )
    text = benchmark.verdict(table, {"arch": "light", "size": 96, "lr": 0.003})
    assert (
        "best mean over 2+ runs: a 0.740" in text and "the profile trains b" in text and "rank" not in text
    )  # a rank is a verdict without an interval
    assert "b minus a: -0.020 (95% interval" in text and "cannot separate" in text  # SDs 0.01, 0.03 over 6 runs
    assert "a real gap" in benchmark.verdict(table.assign(valid_dice_sd=[0.005, 0.005]), {"arch": "light", "size": 96})
    single = benchmark.verdict(table.assign(runs=[1, 6]), {"arch": "light", "size": 96})
    assert "a 0.740: one run, no spread, cannot be compared" in single and "best mean over 2+ runs: b" in single
    assert "not among" in benchmark.verdict(table, {"arch": "light", "size": 128})


def test_benchmark_paired_gaps_pair_runs_by_fold_and_cancel_what_they_share():
    """Fold difficulty shared by both candidates cancels in the paired difference: a constant gain
    of 0.02 on folds that differ by 0.2 is a real gap; shuffled pairs (the control) are not."""
    import pandas as pd

    from busi_utils.evaluation import benchmark

    rng = np.random.default_rng(0)
    hard = np.array([0.5, 0.7, 0.6, 0.8, 0.55, 0.75])  # per (fold, seed): the shared difficulty
    keys = {"fold": [0, 1, 2, 0, 1, 2], "seed": [0, 0, 0, 1, 1, 1]}
    base = pd.DataFrame({"name": "b", **keys, "auc": hard})
    gain = pd.DataFrame({"name": "a", **keys, "auc": hard + 0.02 + rng.normal(0, 0.002, 6)})
    lines = benchmark.paired_gaps(pd.concat([base, gain]), "a", "b", ["auc"], by=["fold", "seed"])
    assert lines[0].startswith("auc, a minus b: +0.02") and "a real gap" in lines[0] and "6 paired runs" in lines[0]
    shuffled = gain.assign(auc=rng.permutation(gain["auc"].to_numpy()))
    control = benchmark.paired_gaps(pd.concat([base, shuffled]), "a", "b", ["auc"], by=["fold", "seed"])
    assert "cannot separate" in control[0]
    one = benchmark.paired_gaps(pd.concat([base, gain.iloc[:1]]), "a", "b", ["auc"], by=["fold", "seed"])
    assert one == ["auc: 1 paired run(s), no interval"]


def test_ood_thresholds_are_the_validation_quantile_and_flag_what_they_promise():
    """On drawn Gaussian features (two views, as the Predictor's): each view's threshold is the 99%
    quantile of the validation distances, so about 1% of new in-distribution samples pass it per
    view (about 2% flagged by either); every sample shifted by 4 SD in either view is flagged."""
    from busi_utils.evaluation import uncertainty

    rng = np.random.default_rng(0)
    dims = {"features": 16, "scan": 8}

    def draw(n, shift=0.0):
        return {v: rng.normal(shift, 1.0, (n, d)).astype(np.float32) for v, d in dims.items()}

    train, valid, new = draw(4000), draw(4000), draw(20000)
    ood = uncertainty.fit_ood(train, valid, 0.99)
    for v in dims:
        density = {"mean": ood[f"{v}_mean"], "precision": ood[f"{v}_precision"]}
        assert ood[f"{v}_threshold"] == pytest.approx(np.quantile(uncertainty.ood_distance(valid[v], density), 0.99))
        per_view = (uncertainty.ood_distance(new[v], density) > ood[f"{v}_threshold"]).mean()
        assert 0.005 < per_view < 0.02, (v, per_view)
    flagged = (uncertainty.ood_score(new, ood) > 1).mean()
    assert 0.01 < flagged < 0.035
    for v in dims:  # a shift in one view alone is enough
        shifted = dict(new, **{v: draw(500, shift=4.0)[v]})
        shifted = {k: x[:500] for k, x in shifted.items()}
        assert (uncertainty.ood_score(shifted, ood) > 1).all(), v
    loose = uncertainty.fit_ood(train, valid, 0.5)  # the control: another quantile, another promise
    assert 0.6 < (uncertainty.ood_score(new, loose) > 1).mean() < 0.9
