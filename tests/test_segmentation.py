"""Stage 1: losses, metrics, the DataBlock's alignment, training items, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from busi_utils.core.errors import LeakageError
from busi_utils.data import dedup, preprocess, splits
from busi_utils.evaluation import metrics
from busi_utils.stage1 import segmentation as seg


def logits_from(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(mask, 10.0, -10.0)).float()[None, None]


EMPTY = np.zeros((8, 8), bool)
BOX = EMPTY.copy()
BOX[2:5, 2:5] = True
OTHER = EMPTY.copy()
OTHER[6:8, 6:8] = True


@pytest.mark.parametrize(
    "pred,truth,expected",
    [(EMPTY, EMPTY, 1.0), (BOX, BOX, 1.0), (BOX, OTHER, 0.0), (BOX, EMPTY, 0.0), (EMPTY, BOX, 0.0)],
)
def test_dice_and_iou_on_hand_made_masks(pred, truth, expected):
    d, i = metrics.dice_iou(pred, truth)
    assert d == expected and i == expected
    t = torch.from_numpy(truth.astype(np.int64))[None]
    assert seg.dice(logits_from(pred), t).item() == pytest.approx(expected)
    assert seg.iou(logits_from(pred), t).item() == pytest.approx(expected)


def test_partial_overlap_by_hand():
    half = EMPTY.copy()
    half[2:5, 2:4] = True  # 6 of the box's 9 pixels
    d, i = metrics.dice_iou(half, BOX)
    assert d == pytest.approx(2 * 6 / 15) and i == pytest.approx(6 / 9)


@pytest.mark.parametrize("loss_cls", [seg.DiceBCELoss, seg.DiceFocalLoss])
def test_losses_rank_perfect_below_disjoint(loss_cls):
    loss = loss_cls()
    t = torch.from_numpy(BOX.astype(np.int64))[None]
    perfect, disjoint = loss(logits_from(BOX), t).item(), loss(logits_from(OTHER), t).item()
    assert perfect < 0.05 and disjoint > 0.9


@pytest.fixture(scope="module")
def synthetic_split(synthetic_index):
    groups = dedup.group_duplicates(synthetic_index, dedup.find_duplicate_pairs(synthetic_index, progress=False))
    return splits.make_split(groups, n_folds=3, seed=0)


@pytest.fixture(scope="module")
def store64(synthetic_index):
    return preprocess.ArrayStore(preprocess.resized_arrays(synthetic_index, 64, progress=False))


def test_training_items_hold_no_test_and_no_normal_image(synthetic_split):
    ids = seg.lesion_train_ids(synthetic_split, exclude_fold=0)
    m = synthetic_split.set_index("image_id").loc[ids]
    assert (m["split"] == "train").all() and (m["label"] != "normal").all() and (m["fold"] != 0).all()
    seg.check_training_items(synthetic_split, ids)
    test_id = synthetic_split.query("split == 'test'")["image_id"].iloc[0]
    with pytest.raises(LeakageError, match=test_id.replace("(", r"\(").replace(")", r"\)")):
        seg.check_training_items(synthetic_split, ids + [test_id])


def test_augmented_batches_keep_lesion_under_its_mask(synthetic_split, store64):
    """Synthetic lesions are dark: after augmentation, pixels under the mask must stay darker
    than the rest, far more than under a mirrored (misaligned) mask."""
    ids = seg.lesion_train_ids(synthetic_split)
    dls = seg.seg_dataloaders(store64, ids, ids[:4], 64, 16, seg.norm_stats(store64, ids))
    torch.manual_seed(0)
    checked = 0
    for _ in range(3):
        xb, yb = dls.train.one_batch()
        for x, y in zip(xb[:, 0], yb.bool()):
            if y.sum() < 20 or (~y).sum() < 20:
                continue
            aligned = x[~y].mean() - x[y].mean()
            mirrored = y.flip(0)  # up-down mirror: a mask that no longer covers the lesion
            assert aligned > 0.5, "lesion pixels are not darker under the augmented mask"
            if (mirrored & ~y).sum() > 20:
                assert aligned > x[~mirrored].mean() - x[mirrored].mean()
            checked += 1
    assert checked >= 10


def test_augmentation_has_no_vertical_flip():
    from busi_utils.stage1.augment import ultrasound_segmentation

    tfms = ultrasound_segmentation(64)
    flip = [t for t in tfms if type(t).__name__ == "Flip"]
    assert flip and all(getattr(t, "p", 0) > 0 for t in flip)
    assert not any(type(t).__name__ in ("Dihedral", "DihedralItem") for t in tfms)


@pytest.mark.parametrize("arch", ["light", "attention"])
def test_models_map_image_to_same_size_logits(arch):
    model = seg.build_segmenter(arch, base=4, size=64, verbose=False).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 1, 64, 64)


def test_resnet_unet_trains_from_scratch_without_download(monkeypatch):
    """Built with downloads refused, then one optimiser step: the loss falls on its batch."""
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: pytest.fail("attempted a download"))
    torch.manual_seed(0)
    model = seg.build_segmenter("resnet18", size=64, verbose=False)
    x, y = torch.rand(2, 1, 64, 64), (torch.rand(2, 1, 64, 64) > 0.7).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = seg.DiceBCELoss()
    before = loss_fn(model(x), y)
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    assert loss_fn(model(x), y) < before


def test_export_round_trip_and_resume(synthetic_split, store64, tmp_path):
    ids = seg.lesion_train_ids(synthetic_split, exclude_fold=0)
    recipe = {"arch": "light", "base": 4, "size": 64, "epochs": 1, "batch_size": 8, "lr": 1e-3, "loss": "dice_bce"}
    first = seg.get_or_train(tmp_path / "m.pt", store64, ids, ids[:8], recipe, 0, show_progress=False)
    assert first.trained and first.info["train_ids"] == sorted(ids) and len(first.history) == 1
    again = seg.get_or_train(tmp_path / "m.pt", store64, ids, ids[:8], recipe, 0, show_progress=False)
    assert not again.trained and again.info["train_ids_hash"] == first.info["train_ids_hash"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.history.csv", "m.pt", "m.time.json"]
    assert (
        "train_seconds" not in torch.load(tmp_path / "m.pt", weights_only=True)["info"]
    )  # the weights' file: no clock
    assert again.info["train_seconds"] == first.info["train_seconds"]  # merged back from m.time.json
    imgs = np.stack([store64.image(i) for i in ids[:4]])
    assert np.allclose(
        seg.predict_probs(first.model, imgs, first.info["stats"]),
        seg.predict_probs(again.model, imgs, again.info["stats"]),
        atol=1e-6,
    )


def test_flip_tta_is_mirror_equivariant_and_follows_the_recipe(synthetic_split, store64):
    """With flip TTA, predicting the mirrored scan gives exactly the mirrored mask; the recipe
    (stored with the model) decides whether notebooks, OOF masks and the Predictor use it."""
    torch.manual_seed(0)
    model = seg.build_segmenter("light", base=4, size=64, verbose=False).eval()
    ids = seg.lesion_train_ids(synthetic_split)[:3]
    imgs = np.stack([store64.image(i) for i in ids])
    stats = (0.3, 0.2)
    tta = seg.predict_probs(model, imgs, stats, flip=True)
    mirrored = seg.predict_probs(model, imgs[:, :, ::-1].copy(), stats, flip=True)
    assert np.allclose(mirrored, tta[:, :, ::-1], atol=1e-5)
    plain = seg.predict_probs(model, imgs, stats)
    assert not np.allclose(plain, tta, atol=1e-4)  # an untrained net is not symmetric: TTA changed something
    info = {"stats": stats, "recipe": {"tta_flip": True}}
    assert np.allclose(seg.predict_masks(model, info, imgs), tta)
    assert np.allclose(seg.predict_masks(model, {"stats": stats, "recipe": {}}, imgs), plain)


def test_model_fingerprint_changes_with_recipe_seed_and_training_list():
    recipe = {"arch": "light", "epochs": 12}
    base = seg.model_fingerprint(recipe, 1, "abc")
    assert base == seg.model_fingerprint(dict(recipe), 1, "abc")
    assert (
        len(
            {
                base,
                seg.model_fingerprint({**recipe, "epochs": 16}, 1, "abc"),
                seg.model_fingerprint(recipe, 2, "abc"),
                seg.model_fingerprint(recipe, 1, "abd"),
            }
        )
        == 4
    )


def test_fold_ids_train_outside_the_fold_and_watch_its_lesions(synthetic_split):
    for k in seg.fold_numbers(synthetic_split):
        train_ids, watched = seg.fold_ids(synthetic_split, k)
        rows = synthetic_split.set_index("image_id")
        assert set(rows.loc[train_ids, "fold"]) == set(seg.fold_numbers(synthetic_split)) - {k}
        assert set(rows.loc[watched, "fold"]) == {k} and set(rows.loc[watched, "label"]) <= {"benign", "malignant"}
        assert set(train_ids).isdisjoint(watched)
        assert seg.fold_seed(42, k) != seg.fold_seed(42, k + 1)


def test_ensemble_is_the_mean_of_its_members_and_the_graph_computes_it(synthetic_split, store64):
    """predict_ensemble averages the members' own TTA predictions (each with its own
    normalisation), and the exported SegmenterGraph computes the very same numbers."""
    from busi_utils.serve.export import SegmenterGraph

    torch.manual_seed(0)
    members = [
        (
            seg.build_segmenter("light", base=4, size=64, verbose=False).eval(),
            {"stats": st, "recipe": {"tta_flip": True}},
        )
        for st in ((0.3, 0.2), (0.4, 0.25))
    ]
    imgs = np.stack([store64.image(i) for i in seg.lesion_train_ids(synthetic_split)[:3]])
    each = [seg.predict_masks(m, info, imgs) for m, info in members]
    mean = seg.predict_ensemble(members, imgs)
    assert np.allclose(mean, (each[0] + each[1]) / 2, atol=1e-6)
    assert not np.allclose(each[0], each[1], atol=1e-3)  # two different members: the mean is not either one
    graph = SegmenterGraph([m for m, _ in members], [i["stats"] for _, i in members], True, 64)
    with torch.no_grad():
        out = graph(torch.from_numpy(imgs.astype(np.float32) / 255)[:, None])[:, 0].numpy()
    assert np.allclose(out, mean, atol=1e-5)


def test_the_recipe_is_described_from_its_own_values():
    text = seg.describe_recipe({"arch": "light", "size": 96, "epochs": 12, "lr": 0.003, "tta_flip": True})
    assert "from scratch" in text and "96 px" in text and "12 epochs" in text and "mirror" in text
    text = seg.describe_recipe(
        {"arch": "lite0", "pretrained": True, "freeze_epochs": 1, "size": 128, "epochs": 11, "lr": 0.002}
    )
    assert "ImageNet" in text and "128 px" in text and "1 frozen + 11 epochs" in text and "mirror" not in text
