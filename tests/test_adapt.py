"""A new site (chapter 8): AdaBN changes batch-norm statistics only, the EM and BBSE prior
estimates recover a known class mix (and EM fails where its assumption fails), the site folder is
written at once and refused when edited or made for other models, and the ``adapt`` command
refuses every bad input by name, with exit 2, before a model loads."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
from PIL import Image

from busi_utils.adapt import batchnorm, fewshot, prior, site
from busi_utils.core.errors import LeakageError, SiteError
from busi_utils.serve import adapt as adapt_cli


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Conv2d(4, 2, 1))


def test_adabn_changes_only_batchnorm_statistics_to_the_plain_average():
    net = _net().eval()
    x = torch.randn(40, 1, 8, 8) * 3 + 5  # another "scanner": other gain and offset
    adapted = batchnorm.adapt_batchnorm(net, batchnorm.batches(x, 16))
    before, after = net.state_dict(), adapted.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    with torch.no_grad():
        feats = [net[0](xb) for xb in batchnorm.batches(x, 16)]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats])
    assert torch.allclose(after["1.running_mean"], means.mean(0), atol=1e-5)  # every batch counts alike
    assert not adapted.training and adapted[1].momentum == net[1].momentum
    with torch.no_grad():
        assert torch.equal(adapted(x[:4]), adapted(x[:4]))  # dropout stays off
    assert set(batchnorm.batchnorm_state(adapted)) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    restored = batchnorm.load_batchnorm_state(_net().eval(), batchnorm.batchnorm_state(adapted))
    assert torch.equal(restored.state_dict()["1.running_var"], after["1.running_var"])


def test_adabn_refuses_a_model_without_batch_norm_and_a_single_scan():
    with pytest.raises(ValueError, match="no batch-norm layer"):
        batchnorm.adapt_batchnorm(nn.Linear(3, 2), [torch.randn(4, 3)])
    with pytest.raises(ValueError, match="at least two scans"):
        batchnorm.adapt_batchnorm(_net(), [torch.randn(1, 1, 8, 8)])
    assert [len(b) for b in batchnorm.batches(torch.zeros(33, 1), 16)] == [16, 17]  # no batch of one


def _drawn(true_prior, train_prior, n=6000, seed=0, shift=0.0):
    """Labels from ``true_prior``; exact Bayes probabilities of a model of ``train_prior`` for a
    feature x ~ N(2y, 1). ``shift`` moves every x (covariate shift): the probabilities are then wrong."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=true_prior)
    x = rng.normal(2.0 * y, 1.0) + shift
    lik = np.exp(-0.5 * (x[:, None] - 2.0 * np.arange(3)) ** 2)
    return y, lik * train_prior / (lik * train_prior).sum(1, keepdims=True)


def test_em_recovers_a_known_prior_and_fails_under_covariate_shift():
    train, true = np.array([0.2, 0.5, 0.3]), np.array([0.6, 0.3, 0.1])
    _, p = _drawn(true, train)
    found, iterations = prior.em_prior(p, train)
    assert np.abs(found - true).max() < 0.03 and iterations < 200
    _, shifted = _drawn(true, train, shift=1.5)  # negative control: calibration broken
    assert np.abs(prior.em_prior(shifted, train)[0] - true).max() > 0.15
    assert np.allclose(prior.adjust_to_prior(p, train, train), p)  # no change of mix, no change
    bounded, _ = prior.em_prior(shifted, train, floor=0.1)
    assert bounded.min() >= 0.1 - 1e-9 and np.isclose(bounded.sum(), 1)


def test_bbse_recovers_a_known_prior_from_home_confusions():
    train, true = np.array([0.2, 0.5, 0.3]), np.array([0.6, 0.3, 0.1])
    y_home, p_home = _drawn(train, train, seed=1)
    joint = prior.confusion_joint(y_home, p_home.argmax(1), 3)
    _, p_site = _drawn(true, train, seed=2)
    assert np.abs(prior.bbse_prior(joint, p_site.argmax(1)) - true).max() < 0.05
    with pytest.raises(ValueError, match="prior of 3"):
        prior.adjust_to_prior(p_site, [0.5, 0.5], true)


def test_patient_draws_are_seeded_and_refuse_more_than_the_pool():
    pool = [f"P{k}" for k in range(5)]
    assert fewshot.draw_patients(pool, 2, 3, 7) == fewshot.draw_patients(pool, 2, 3, 7)
    assert fewshot.draw_patients(pool, 5, 3, 7) == [sorted(pool)]  # all of them: one draw
    with pytest.raises(SiteError, match="k=6: the development pool has 5 patients"):
        fewshot.draw_patients(pool, 6, 3, 0)


def test_finetuning_moves_only_the_named_layers_and_rehearsal_keeps_home_in_every_batch():
    """Rehearsal puts the home scans in every batch: tuned on site scans with empty masks only, a
    U-Net stops painting the home scans too (the negative control: what forgetting looks like);
    with home scans whose masks are full rehearsed, it keeps painting them. Tuning the encoder
    leaves the decoder's weights as they were, and a tuning is repeatable from its seed."""
    from busi_utils.stage1.unet import LightUNet

    torch.manual_seed(0)
    unet = LightUNet(base=4, depth=2).eval()
    rng = np.random.default_rng(0)
    site_x, home_x = (rng.integers(0, 256, (8, 16, 16), dtype=np.uint8) for _ in range(2))
    site_y, home_y = np.zeros((8, 16, 16), bool), np.ones((8, 16, 16), bool)
    stats = (0.5, 0.25)

    def painted_at_home(model):
        with torch.no_grad():
            x = (torch.from_numpy(home_x[:, None] / np.float32(255)) - stats[0]) / stats[1]
            return float(torch.sigmoid(model(x)).mean())

    encoder = fewshot.finetune_segmenter(unet, stats, site_x, site_y, steps=3, lr=1e-2, layers="encoder")
    before, after = unet.state_dict(), encoder.state_dict()
    moved = {n.split(".")[0] for n in before if before[n].is_floating_point() and not torch.equal(before[n], after[n])}
    assert moved == {"down"}, moved
    forgot = fewshot.finetune_segmenter(unet, stats, site_x, site_y, steps=30, lr=1e-2)
    kept = fewshot.finetune_segmenter(unet, stats, site_x, site_y, steps=30, lr=1e-2, rehearse=(home_x, home_y))
    assert painted_at_home(forgot) < 0.2 < 0.5 < painted_at_home(kept)
    again = fewshot.finetune_segmenter(unet, stats, site_x, site_y, steps=30, lr=1e-2, rehearse=(home_x, home_y))
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), again.state_dict().values()))


def _fake_run(tmp_path):
    """A run folder with what the adapt command checks before a model loads (no models)."""
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    (run / "masks").mkdir()
    (run / "masks" / "unet_fold0.pt").write_bytes(b"weights")
    summary = {"finalised": {"models_sha256": "abc"}}
    (run / "models" / "classifier_summary.json").write_text(json.dumps(summary))
    return run


def _labelled_site(tmp_path, labels: dict[str, tuple[str, str]]):
    """A generic labelled layout: images/ + labels.csv (image, label, patient)."""
    root = tmp_path / "site"
    (root / "images").mkdir(parents=True)
    for name in labels:
        Image.fromarray(np.full((32, 32), 90, np.uint8)).save(root / "images" / name)
    rows = [{"image": n, "label": lab, "patient": p} for n, (lab, p) in labels.items()]
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def _run_cli(capsys, *args) -> tuple[int, str]:
    code = adapt_cli.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_adapt_command_refuses_bad_input_by_name_before_any_model(tmp_path, capsys):
    run = _fake_run(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _run_cli(capsys, "--run", run, "--site", "a", "--data", empty)
    assert code == 2 and "no scans found" in err and str(empty.name) in err
    one_class = _labelled_site(tmp_path, {"a.png": ("normal", "P1"), "b.png": ("normal", "P2")})
    code, err = _run_cli(capsys, "--run", run, "--site", "a", "--data", one_class, "--labelled")
    assert code == 2 and "needs normal scans and lesion scans" in err and "normal" in err
    code, err = _run_cli(capsys, "--run", run, "--site", "a", "--data", one_class, "--k", 9)
    assert code == 2 and "k=9: the development pool has 2 patients" in err
    (run / "sites" / "taken").mkdir(parents=True)
    code, err = _run_cli(capsys, "--run", run, "--site", "taken", "--data", one_class)
    assert code == 2 and "the site exists (use --force" in err
    code, err = _run_cli(capsys, "--run", run, "--site", "../escape", "--data", one_class)
    assert code == 2 and "site name" in err
    code, err = _run_cli(capsys, "--run", tmp_path / "nowhere", "--site", "a", "--data", one_class)
    assert code == 2 and "no finalised models" in err
    assert not list((run / "sites").glob(".*")) and sorted(p.name for p in (run / "sites").iterdir()) == ["taken"]


def test_adaptation_never_reads_an_evaluation_patient(tmp_path):
    index = pd.DataFrame(
        {"image_id": list("abcd"), "patient": ["D1", "D1", "E1", "E1"], "label": ["normal", "benign"] * 2}
    )
    split_file = tmp_path / "split.csv"
    pd.DataFrame({"patient": ["D1", "E1"], "role": ["development", "evaluation"]}).to_csv(split_file, index=False)
    rows, _ = adapt_cli.adaptation_rows(index, str(split_file), None, None, True, 0)
    assert set(rows["patient"]) == {"D1"}  # the split alone keeps the evaluation patient out
    rows, _ = adapt_cli.adaptation_rows(index, str(split_file), "D1", None, True, 0)  # negative control
    assert set(rows["patient"]) == {"D1"}
    with pytest.raises(LeakageError, match="E1"):  # planted: asked for by name
        adapt_cli.adaptation_rows(index, str(split_file), "D1,E1", None, True, 0)


def test_site_folder_is_written_at_once_and_refused_when_edited_or_for_another_run(tmp_path):
    run = _fake_run(tmp_path)
    manifest = {"run": site.run_fingerprint(run), "fusion": {"kind": "mean"}, "temperature": 1.0, "entropy_cutoff": 0.5}

    def broken(tmp):
        (tmp / "state.pt").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        site.write_site(run, "x", manifest, broken)
    assert not (run / "sites" / "x").exists() and not list((run / "sites").glob(".*"))  # nothing half-written
    folder = site.write_site(run, "x", manifest, lambda tmp: (tmp / "state.pt").write_bytes(b"state"))
    assert site.read_site(run, "x").answer_params()["temperature"] == 1.0
    with pytest.raises(SiteError, match="exists"):
        site.write_site(run, "x", manifest, lambda tmp: None)
    with pytest.raises(RuntimeError):  # a failed --force keeps the old site
        site.write_site(run, "x", manifest, broken, force=True)
    assert site.read_site(run, "x").manifest["files"] == {"state.pt": site.file_sha256(folder / "state.pt")}
    (folder / "state.pt").write_bytes(b"edited")
    with pytest.raises(SiteError, match="changed since the site was fitted"):
        site.read_site(run, "x")
    site.write_site(run, "x", manifest, lambda tmp: (tmp / "state.pt").write_bytes(b"state"), force=True)
    (run / "masks" / "unet_fold0.pt").write_bytes(b"retrained")  # the run's models change
    with pytest.raises(SiteError, match="fitted for another run"):
        site.read_site(run, "x")
    with pytest.raises(SiteError, match="no such site"):
        site.read_site(run, "y")


def test_a_site_answers_everywhere_and_leaves_the_run_unchanged(complete_quick_paths, quick_test_image, tmp_path):
    """On the quick run: the command fits a labelled site on development patients only; the
    run's own answers stay bit-identical; the site's ONNX graphs answer as its torch models, and
    otherwise than the run (the negative control); infer and evaluate answer with --site."""
    from busi_utils.data import external, splits
    from busi_utils.evaluation import evaluate
    from busi_utils.serve import infer
    from busi_utils.serve.predictor import Predictor

    run = complete_quick_paths.root
    root, kind = external.find_external(None)
    key = "synthetic" if kind == "synthetic" else "bus_uclm"
    split_file = complete_quick_paths.external_split(key)
    before = Predictor(run).predict(quick_test_image)
    code = adapt_cli.main(
        [
            "--run",
            str(run),
            "--site",
            "test-site",
            "--data",
            str(root),
            "--split",
            str(split_file),
            "--labelled",
            "--force",
        ]
    )
    assert code == 0
    fitted = site.read_site(run, "test-site")
    split = pd.read_csv(split_file, dtype={"patient": str})
    assert set(fitted.manifest["data"]["patients"]) <= splits.patients_with_role(split, splits.DEVELOPMENT)
    after = Predictor(run).predict(quick_test_image)
    assert np.array_equal(before.mask_prob, after.mask_prob) and before.probabilities == after.probabilities
    onnx, torch_ = (Predictor(run, backend=b, site="test-site") for b in ("onnx", "torch"))
    assert onnx.backend_name == "onnx" and torch_.backend_name == "torch"
    a, b = onnx.predict(quick_test_image), torch_.predict(quick_test_image)
    assert np.allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-4)
    assert np.abs(a.mask_prob - b.mask_prob).max() < 1e-3
    assert not np.allclose(list(a.probabilities.values()), list(before.probabilities.values()), atol=1e-6)
    out = tmp_path / "infer"
    assert (
        infer.main(["--image", str(quick_test_image), "--run", str(run), "--site", "test-site", "--out", str(out)]) == 0
    )
    assert (
        infer.main(["--image", str(quick_test_image), "--run", str(run), "--site", "nowhere", "--out", str(out)]) == 2
    )
    report = tmp_path / "report.json"
    code = evaluate.main(
        ["--data", str(root), "--run", str(run), "--site", "test-site", "--bootstrap", "20", "--out", str(report)]
    )
    scored = json.loads(report.read_text())
    assert code == 0 and scored["site"] == "test-site"
    assert set(scored["site_fitted_patients"]) == set(fitted.manifest["data"]["patients"])  # flagged: not a test


def test_the_domain_classifier_sees_a_shift_and_no_shift():
    from busi_utils.adapt import shift
    from busi_utils.evaluation import adaptation

    rng = np.random.default_rng(0)
    home = rng.integers(0, 200, (60, 16, 16))
    brighter = np.clip(rng.integers(0, 200, (30, 16, 16)) + 50, 0, 255)  # another gain
    alike = rng.integers(0, 200, (30, 16, 16))  # negative control: the same scanner
    groups = np.repeat(np.arange(6), 5)
    far, far_ci = adaptation.domain_auc(
        shift.gray_histograms(home), shift.gray_histograms(brighter), groups, n_boot=200
    )
    near, near_ci = adaptation.domain_auc(shift.gray_histograms(home), shift.gray_histograms(alike), groups, n_boot=200)
    assert far > 0.95 and far_ci[0] <= far <= far_ci[1]
    assert near < 0.75 and near_ci[1] < far_ci[0]  # the two intervals do not overlap
    assert adaptation.domain_auc(shift.gray_histograms(home), shift.gray_histograms(alike), groups)[1] == [None, None]
    assert (
        shift.domain_auc(shift.gray_histograms(home), shift.gray_histograms(brighter), groups) == far
    )  # one AUC, two doors
