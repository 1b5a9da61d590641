"""Stage 2's cross-fitted ensembles, the fused decision and the referral cutoff.

Fast tests on synthetic arrays first; then checks of the quick run's trained members (the
quick course of the session), the same claims the course makes for the cpu run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from busi_utils.core.config import CLASSES
from busi_utils.evaluation import uncertainty
from busi_utils.stage2 import crossfit, fusion

P = [f"p_{c}" for c in CLASSES]


def _probs(rng, n):
    p = rng.dirichlet(np.ones(3), n)
    return p


def test_veto_removes_normal_only_where_a_lesion_was_found():
    p = np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    out = fusion.veto(p, np.array([0.995, 0.5]), 0.99)
    assert out[0, 0] == 0 and np.isclose(out[0].sum(), 1) and np.isclose(out[0, 1] / out[0, 2], 3)
    assert np.allclose(out[1], p[1])


def test_cross_validated_fusion_never_fits_on_the_fold_it_scores(monkeypatch):
    """conf carries each row's number: every fit must see exactly the rows outside the fold scored."""
    rng = np.random.default_rng(0)
    n = 60
    folds = np.repeat([0, 1, 2], 20)
    y = rng.integers(0, 3, n)
    seen = []
    real_fit = fusion.fit

    def spy(kind, y_fit, p_scan, p_crop, conf):
        seen.append(set(np.asarray(conf).round().astype(int)))
        return real_fit(kind, y_fit, p_scan, p_crop, np.full(len(conf), 0.5))

    monkeypatch.setattr(fusion, "fit", spy)
    fusion.cross_validated("stacked", y, folds, _probs(rng, n), _probs(rng, n), np.arange(n, dtype=float))
    assert seen == [set(np.flatnonzero(folds != k)) for k in (0, 1, 2)]


def test_stacked_fusion_is_the_fitted_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    p_scan = np.clip(_probs(rng, 90) + np.eye(3)[y] * 0.5, 0, None)
    p_scan /= p_scan.sum(1, keepdims=True)
    p_crop, conf = _probs(rng, 90), rng.uniform(0, 1, 90)
    params = fusion.fit("stacked", y, p_scan, p_crop, conf)
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(fusion.stack_features(p_scan, p_crop, conf), y)
    expected = lr.predict_proba(fusion.stack_features(p_scan, p_crop, conf))
    assert np.allclose(fusion.fuse(params, p_scan, p_crop, conf), expected, atol=1e-6)


def test_choose_keeps_the_simplest_candidate_within_one_standard_error():
    rows = {  # rule: (out-of-fold macro-F1, standard error of its difference from the best candidate)
        "scan": (0.90, 0.05),  # a reference row: never chosen, however good
        "crop": (0.70, 0.02),
        "mean": (0.70, 0.02),  # 0.70 + 0.02 < 0.76: more than one SE behind
        "mean+veto": (0.745, 0.02),  # 0.745 + 0.02 >= 0.76: within one SE
        "stacked": (0.76, 0.0),
    }
    table = pd.DataFrame(rows, index=["macro_f1", "se"]).T
    assert fusion.choose(table) == "mean+veto"
    table.loc["mean", "se"] = 0.07
    assert fusion.choose(table) == "mean"  # within its own noise of the best: the simplest wins
    table["se"] = 0.0
    assert fusion.choose(table) == "stacked"
    with pytest.raises(ValueError, match="unknown fusion"):
        fusion.fit("median", np.zeros(3, int), _probs(np.random.default_rng(0), 3), None, None)


def test_paired_se_is_zero_for_identical_answers_and_grows_with_disagreement():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 200)
    p = np.eye(3)[y] * 0.6 + 0.2  # always right
    assert fusion.paired_se(y, p, p) == 0.0
    few = p.copy()
    few[:10] = np.roll(few[:10], 1, axis=1)  # 10 answers changed
    many = p.copy()
    many[:80] = np.roll(many[:80], 1, axis=1)
    assert 0 < fusion.paired_se(y, p, few) < fusion.paired_se(y, p, many)


def test_decide_is_fuse_then_temperature():
    rng = np.random.default_rng(2)
    views = {fusion.SCAN_VIEW: _probs(rng, 10), fusion.CROP_VIEW: _probs(rng, 10)}
    conf = rng.uniform(0, 1, 10)
    params = {"kind": "mean+veto", "threshold": 0.5}
    out = fusion.decide(params, views, conf, 2.0)
    expected = uncertainty.apply_temperature(
        fusion.fuse(params, views[fusion.SCAN_VIEW], views[fusion.CROP_VIEW], conf), 2.0
    )
    assert np.allclose(out, expected) and np.allclose(out.sum(1), 1)


def test_shape_alone_reads_the_descriptors():
    rng = np.random.default_rng(3)
    labels = np.array(CLASSES)[rng.integers(0, 3, 120)]
    x = rng.normal(size=(120, 12))
    x[:, 1] += 3 * (labels == "malignant")  # "taller than wide" carries the class
    params = fusion.fit_shape_alone(x, labels)
    p = fusion.predict_shape_alone(params, x)
    assert np.allclose(p.sum(1), 1)
    assert p[labels == "malignant", 2].mean() > p[labels != "malignant", 2].mean() + 0.3


def test_earned_cutoff_keeps_its_promise():
    rng = np.random.default_rng(4)
    n = 400
    y = rng.integers(0, 3, n)
    sharp = rng.uniform(0.34, 0.98, n)  # how sure each case is; the surer, the likelier right
    right = rng.uniform(0, 1, n) < sharp
    pred = np.where(right, y, (y + 1) % 3)
    probs = np.full((n, 3), 0.0)
    probs[np.arange(n), pred] = sharp
    probs[np.arange(n), (pred + 1) % 3] = (1 - sharp) / 2
    probs[np.arange(n), (pred + 2) % 3] = (1 - sharp) / 2
    labels = np.array(CLASSES)[y]
    out = uncertainty.earned_cutoff(labels, probs, target=0.9)
    h = uncertainty.entropy(probs)
    clear = h <= out["cutoff"]
    assert (pred[clear] == y[clear]).mean() >= 0.9 and np.isclose(out["accuracy"], (pred[clear] == y[clear]).mean())
    assert np.isclose(out["share"], clear.mean())
    assert 0.1 < out["share"] < 1.0  # a real cutoff, not everything and not nothing
    # a model that is right half the time earns nothing: the clearest 10% are kept, with their accuracy said
    coin = uncertainty.earned_cutoff(
        labels, np.eye(3)[np.where(rng.uniform(0, 1, n) < 0.5, y, (y + 1) % 3)] * 0.8 + 0.0667
    )
    assert coin["accuracy"] < 0.9 and coin["share"] == pytest.approx(0.1, abs=0.01)


def _fake_member_files(paths, view, folds, pool, test, rng):
    for k in folds:
        for part, rows in (("oof", pool[pool["fold"] == k]), ("test", test)):
            frame = rows[["image_id", "label"]].copy()
            frame[P] = _probs(rng, len(rows))
            frame["pred"] = "benign"
            paths.probabilities(crossfit.member_stem(view, k), part).parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(paths.probabilities(crossfit.member_stem(view, k), part), index=False)


def test_out_of_fold_table_has_each_pool_image_once_from_its_own_fold(tmp_path):
    from busi_utils.core.runfolder import RunPaths

    paths = RunPaths(tmp_path)
    rng = np.random.default_rng(5)
    pool = pd.DataFrame({"image_id": [f"img{i}" for i in range(30)], "label": "benign", "fold": np.arange(30) % 3})
    test = pd.DataFrame({"image_id": [f"t{i}" for i in range(6)], "label": "malignant"})
    _fake_member_files(paths, fusion.SCAN_VIEW, [0, 1, 2], pool, test, rng)
    oof = crossfit.oof_probs(paths, fusion.SCAN_VIEW, [0, 1, 2])
    assert sorted(oof["image_id"]) == sorted(pool["image_id"])
    fold_of = pool.set_index("image_id")["fold"]
    assert (oof["fold"].to_numpy() == fold_of.loc[oof["image_id"]].to_numpy()).all()
    members = crossfit.member_test_probs(paths, fusion.SCAN_VIEW, [0, 1, 2])
    mean = np.mean([members[k][P].to_numpy() for k in (0, 1, 2)], axis=0)
    assert np.allclose(crossfit.test_probs(paths, fusion.SCAN_VIEW, [0, 1, 2])[P].to_numpy(), mean)


def test_member_leak_check_catches_a_planted_leak():
    split = pd.DataFrame(
        {"image_id": ["a", "b", "c", "t"], "split": ["train", "train", "train", "test"], "fold": [0, 1, 1, -1]}
    )
    ok = [(None, {"variant": "v", "fold": 0, "train_ids": ["b", "c"]})]
    assert crossfit.check_members_leak_free(ok, split) == 1
    with pytest.raises(AssertionError, match="its own held-out fold"):
        crossfit.check_members_leak_free([(None, {"variant": "v", "fold": 0, "train_ids": ["a", "b"]})], split)
    with pytest.raises(AssertionError, match="test images"):
        crossfit.check_members_leak_free([(None, {"variant": "v", "fold": 1, "train_ids": ["a", "t"]})], split)


# --------------------------------------------------------------------------- the quick run's members


def test_quick_run_members_never_saw_their_fold_or_the_test_split(quick_paths):
    summary = json.loads(quick_paths.classifier_summary.read_text())
    split = quick_paths.read_split()
    for view in [*summary["views"], "image_only"]:
        members = crossfit.load_members(quick_paths, view, summary["members"])
        assert crossfit.check_members_leak_free(members, split) == len(summary["members"])
        oof = crossfit.oof_probs(quick_paths, view, summary["members"])
        for (_, info), k in zip(members, summary["members"]):
            held = set(split.query("split == 'train' and fold == @k")["image_id"])
            assert set(oof.loc[oof["fold"] == k, "image_id"]) == held  # member k predicts exactly its fold
            assert not held & set(info["train_ids"])


def test_quick_run_calibration_was_fitted_out_of_fold_and_the_answer_carries_evidence(quick_paths, quick_test_image):
    from busi_utils.serve import infer

    predictor = infer.Predictor(quick_paths.root)
    scan = quick_test_image
    summary = json.loads(quick_paths.classifier_summary.read_text())
    split = quick_paths.read_split()
    n_oof = int(split.query("split == 'train'")["fold"].isin(summary["members"]).sum())
    fin = summary["finalised"]
    assert fin["n_oof"] == n_oof and fin["cutoff_accuracy"] is not None
    pred = predictor.predict(scan)
    answer = pred.to_json()
    assert 0 <= answer["lesion_confidence"] <= 1 and answer["lesion_confidence"] == pytest.approx(
        float(pred.mask_prob.max()), abs=0.02
    )
    assert answer["shape_evidence"] and all(isinstance(t, str) for t in answer["shape_evidence"])
    assert pred.lesion_view.shape == (predictor.cls_size, predictor.cls_size)
    assert np.isclose(sum(answer["probabilities"].values()), 1, atol=1e-5)


# --------------------------------------------------------------------------- resuming stage 2


@pytest.fixture(scope="module")
def quick_vd(quick_paths):
    from busi_utils import data
    from busi_utils.core import config
    from busi_utils.stage2 import classification as cls

    recipe = config.load_profile("quick")["classify"]
    index, split = data.read_index(quick_paths.index_csv), quick_paths.read_split()
    return cls.load_variant_data(quick_paths, index, split, recipe["size"], progress=False), recipe


def test_a_member_is_loaded_when_its_inputs_are_unchanged_and_retrained_when_its_masks_changed(quick_vd, monkeypatch):
    from busi_utils.stage2 import classification as cls

    vd, recipe = quick_vd
    view, fold = fusion.SCAN_VIEW, 0
    path = crossfit.member_path(vd.paths, view, fold)
    before = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise RuntimeError("trained")

    monkeypatch.setattr(cls, "train_classifier", no_training)
    run = crossfit.train_member(vd, view, recipe, 42, fold)  # the quick course's seed
    assert run.trained is False and path.stat().st_mtime_ns == before
    monkeypatch.setattr(vd, "masks_hash", "another set of masks")
    with pytest.raises(RuntimeError, match="trained"):
        crossfit.train_member(vd, view, recipe, 42, fold)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="trained"), monkeypatch.context() as m:
        m.setattr(cls, "train_classifier", no_training)
        crossfit.train_member(vd, view, dict(recipe, epochs=recipe["epochs"] + 1), 42, fold)  # another recipe
    assert path.stat().st_mtime_ns == before  # nothing was overwritten on the way


def test_finalise_redoes_nothing_when_its_inputs_are_unchanged(quick_vd):
    from busi_utils.core import config
    from busi_utils.serve import export

    vd, _ = quick_vd
    paths = vd.paths
    watched = [paths.classifier_summary, paths.ood_npz, *sorted(paths.exports.glob("*"))]
    before = {p: p.stat().st_mtime_ns for p in watched}
    finalised, _, done_now = export.finalise_run(paths, vd, config.load_profile("quick")["evaluate"]["tta"])
    assert done_now is False
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert finalised == json.loads(paths.classifier_summary.read_text())["finalised"]


def test_the_headline_is_the_fused_calibrated_ensemble_the_predictor_ships(quick_vd):
    """metrics.json's ``method`` row is recomputed here from the members' saved test
    probabilities through the run's own rule and temperature; and the Predictor, fed test scans
    from disk, gives those very probabilities. A headline computed any other way fails."""
    from busi_utils.evaluation import metrics
    from busi_utils.serve import infer

    vd, _ = quick_vd
    paths = vd.paths
    summary = json.loads(paths.classifier_summary.read_text())
    views = summary["views"]
    tt = crossfit.test_table(vd, views, summary["members"])
    by_view = {v: crossfit.view_matrix(tt, v) for v in views}
    shipped = fusion.decide(summary["fusion"], by_view, tt["conf"].to_numpy(), summary["finalised"]["temperature"])
    headline = json.loads(paths.metrics_json.read_text())["classification"]["method"]
    recomputed = metrics.classification_metrics(tt["label"], shipped)
    for key in ("accuracy", "macro_f1", "malignant_recall", "auc_ovr"):
        assert headline[key] == pytest.approx(recomputed[key], abs=1e-9), key
    worth = json.loads(paths.metrics_json.read_text())["mask_worth"]["paired"]["macro_f1"]["value"]
    image_only = metrics.classification_metrics(
        tt["label"], crossfit.view_matrix(crossfit.test_table(vd, ["image_only"], summary["members"]), "image_only")
    )
    assert worth == pytest.approx(recomputed["macro_f1"] - image_only["macro_f1"], abs=1e-9)
    from busi_utils import data

    index = data.read_index(paths.index_csv).set_index("image_id")
    predictor = infer.Predictor(paths.root, backend="torch")
    for k in range(3):
        answer = predictor.predict(index.loc[tt["image_id"].iloc[k], "image_path"])
        got = np.array([answer.probabilities[c] for c in CLASSES])
        assert np.allclose(got, shipped[k], atol=1e-4), (k, got, shipped[k])


def test_the_shipped_temperature_is_the_out_of_fold_one_and_not_the_test_split_s(quick_vd):
    """Recomputed from the out-of-fold table, the temperature equals the one the run ships (and
    the Predictor applies); fitted on the test split instead, it would differ: the check can see
    where a temperature came from."""
    from busi_utils.serve import export

    vd, _ = quick_vd
    summary = json.loads(vd.paths.classifier_summary.read_text())
    shipped = summary["finalised"]["temperature"]
    oof, fused = export.oof_fused(vd, summary)
    assert not set(oof["image_id"]) & set(vd.split.query("split == 'test'")["image_id"])
    assert uncertainty.fit_temperature(oof["label"], fused) == pytest.approx(shipped, rel=1e-9)
    tt = crossfit.test_table(vd, summary["views"], summary["members"])
    by_view = {v: crossfit.view_matrix(tt, v) for v in summary["views"]}
    scan, crop = by_view[fusion.SCAN_VIEW], by_view.get(fusion.CROP_VIEW, by_view[fusion.SCAN_VIEW])
    raw = fusion.fuse(summary["fusion"], scan, crop, tt["conf"].to_numpy())
    assert abs(uncertainty.fit_temperature(tt["label"], raw) - shipped) > 1e-3


def test_two_step_lets_stage1_alone_answer_whether_there_is_a_lesion():
    """The views say which kind, never whether: views that shout "normal" leave P(normal) where
    stage 1 put it, while the mean of the views (the negative control) follows them."""
    normal_views = np.array([[0.98, 0.01, 0.01], [0.98, 0.015, 0.005]])
    conf = np.array([0.97, 0.02])  # a painted lesion, an empty mask
    p = fusion.two_step(normal_views, normal_views, conf, slope=2.0)
    assert p.argmax(1).tolist() == [1, 0]  # lesion (benign, as the views divide it), then normal
    assert np.allclose(p.sum(1), 1)
    assert np.allclose(p[:, 0], 1 - fusion.presence(conf, slope=2.0))
    assert fusion.fuse({"kind": "mean"}, normal_views, normal_views, conf).argmax(1).tolist() == [0, 0]
    malignant_views = np.array([[0.5, 0.1, 0.4]] * 2)
    assert fusion.two_step(malignant_views, malignant_views, conf, slope=2.0).argmax(1).tolist() == [2, 0]


def test_presence_turns_at_the_unets_own_threshold():
    conf = np.array([0.1, 0.5, 0.9])
    q = fusion.presence(conf, slope=1.5)
    assert q[1] == pytest.approx(0.5) and q[0] < 0.5 < q[2]
    y = np.array([0] * 20 + [1] * 20)
    conf = np.r_[np.linspace(0.01, 0.6, 20), np.linspace(0.4, 0.99, 20)]
    params = fusion.fit("two-step", y, _probs(np.random.default_rng(0), 40), _probs(np.random.default_rng(1), 40), conf)
    assert params["threshold"] in fusion.PRESENCE_GRID and params["slope"] > 0.1


def test_the_profile_names_the_shipped_rule():
    rng = np.random.default_rng(0)
    n = 60
    oof = pd.DataFrame({"label": np.array(CLASSES)[rng.integers(0, 3, n)], "fold": np.arange(n) % 3,
                        "conf": rng.uniform(0, 1, n)})  # fmt: skip
    for view in (fusion.SCAN_VIEW, fusion.CROP_VIEW):
        oof[[f"{view}:p_{c}" for c in CLASSES]] = _probs(rng, n)
    _, chosen, params, _ = fusion.select(oof, rule="two-step")
    assert chosen == params["kind"] == "two-step"
    with pytest.raises(ValueError, match="unknown decision rule"):
        fusion.select(oof, rule="vote")


def test_gated_calls_a_lesion_only_where_stage1_and_the_views_agree():
    lesion_views = np.array([[0.1, 0.7, 0.2]] * 2)
    normal_views = np.array([[0.9, 0.05, 0.05]] * 2)
    conf = np.array([0.97, 0.02])  # painted, empty
    assert fusion.gated(lesion_views, lesion_views, conf, slope=2.0).argmax(1).tolist() == [1, 0]
    assert fusion.gated(normal_views, normal_views, conf, slope=2.0).argmax(1).tolist() == [0, 0]
    p = fusion.gated(lesion_views, normal_views, conf, slope=2.0)
    assert np.allclose(p.sum(1), 1) and np.all(p >= 0)
