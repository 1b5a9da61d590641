"""Stage 2: what goes into the classifier, and that augmentation keeps channels aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from busi_utils import data
from busi_utils.core.images import resize_prob
from busi_utils.data import preprocess
from busi_utils.stage1 import oof
from busi_utils.stage2 import classification as cls


@pytest.fixture(scope="module")
def variant_data(quick_paths):
    from busi_utils.core import config

    recipe = config.load_profile("quick")["classify"]
    split = quick_paths.read_split()
    index = data.read_index(quick_paths.index_csv)
    images = preprocess.ArrayStore(preprocess.resized_arrays(index, recipe["size"], progress=False))
    crops = preprocess.ArrayStore(
        preprocess.resized_arrays(index, cls.crop_source_size(recipe["size"]), progress=False)
    )
    masks = oof.read_mask_manifest(quick_paths)
    used = split[split["split"].isin(["train", "test"])]["image_id"].tolist()
    return cls.VariantData(
        quick_paths, split, images, dict(zip(used, oof.load_masks(quick_paths, masks, used))), recipe["size"], crops
    ), masks


def test_channel_two_is_the_stored_oof_mask_never_the_truth(variant_data):
    vd, masks = variant_data
    x, y = vd.arrays("image+pred_mask", "train")
    stats = cls.channel_stats(x)
    dls = cls.cls_dataloaders(x, y, x, y, 16, stats, "weighted_loss", 0)
    xb, _ = dls.valid.one_batch()  # validation batches are not shuffled nor augmented
    xb = xb * torch.tensor(stats[1]).view(1, -1, 1, 1) + torch.tensor(stats[0]).view(1, -1, 1, 1)
    ids = vd.train["image_id"].tolist()[: len(xb)]
    stored = oof.load_masks(vd.paths, masks, ids)
    expected = np.stack([resize_prob(m, vd.size) for m in stored])
    assert np.allclose(xb[:, 1].numpy(), expected, atol=1e-4)
    truth = np.stack([vd.images.mask(i) for i in ids]).astype(np.float32)
    lesion = truth.reshape(len(ids), -1).any(1)
    assert np.abs(expected - truth)[lesion].mean() > 0.01  # not the ground truth
    assert set(masks.set_index("image_id").loc[ids, "model"]) <= {f"unet_fold{k}.pt" for k in range(10)}


def test_only_the_labelled_leaky_variant_sees_the_ground_truth(variant_data):
    vd, _ = variant_data
    ids = vd.train["image_id"].tolist()[:8]
    truth = np.stack([vd.images.mask(i) for i in ids]).astype(np.float32)
    for variant in cls.VARIANTS:
        x = cls.build_inputs(variant, ids, vd.images, vd.pred_masks, vd.size, vd.crop_images)
        assert x.shape[1] == len(cls.CHANNELS[variant])
        has_truth = any(np.array_equal(x[:, c], truth) for c in range(x.shape[1]))
        assert has_truth == (variant == "image+gt_mask"), variant


def test_augmentation_moves_scan_and_mask_together():
    """A dark square in channel 1 and the same square in channel 2: after fastai's
    augmentation the dark pixels must still be where the mask is."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.6, 0.9, size=(32, 2, 64, 64)).astype(np.float32)
    x[:, 1] = 0
    for k in range(32):
        r, c = rng.integers(8, 40, 2)
        x[k, 0, r : r + 16, c : c + 16] = 0.05
        x[k, 1, r : r + 16, c : c + 16] = 1.0
    y = ["benign"] * 32
    stats = ([0.5, 0.1], [0.3, 0.3])
    dls = cls.cls_dataloaders(x, y, x[:4], y[:4], 16, stats, "weighted_loss", 0)
    torch.manual_seed(1)
    xb, _ = dls.train.one_batch()
    xb = xb * torch.tensor(stats[1]).view(1, -1, 1, 1) + torch.tensor(stats[0]).view(1, -1, 1, 1)
    for img, mask in zip(xb[:, 0], xb[:, 1] > 0.5):
        assert mask.sum() > 50
        assert img[mask].mean() < img[~mask].mean() - 0.3


def test_class_weights_favour_rare_classes():
    w = cls.class_weights(["benign"] * 6 + ["malignant"] * 3 + ["normal"] * 1)
    normal, benign, malignant = w.tolist()
    assert normal > malignant > benign


def test_class_order_is_the_same_everywhere():
    """fastai sorts a vocab unless told not to; probabilities, weights and labels must all use
    CLASSES order (normal, benign, malignant) or every metric is silently permuted."""
    from busi_utils.core.config import CLASSES

    x = np.zeros((6, 1, 16, 16), np.float32)
    y = ["normal", "benign", "malignant"] * 2
    dls = cls.cls_dataloaders(x, y, x, y, 3, ([0.0], [1.0]), "weighted_loss", 0)
    assert list(dls.vocab) == list(CLASSES)
    _, yb = dls.valid.one_batch()
    assert [CLASSES[int(i)] for i in yb] == y[:3]


def test_new_masks_mean_a_new_classifier_not_a_resumed_one(variant_data):
    vd, _ = variant_data
    masks = dict(vd.pred_masks)
    assert cls.masks_hash(masks) == vd.masks_hash
    first = next(iter(masks))
    masks[first] = masks[first].copy()
    masks[first][0, 0] = 1.0 - masks[first][0, 0]
    assert cls.masks_hash(masks) != vd.masks_hash


def test_lighting_touches_only_the_scan_and_mask_aug_only_predicted_masks():
    """mask_only has no scan: no lighting may touch its (mask) channel; MaskConfidence acts on
    predicted-mask channels only, never on a ground-truth mask."""
    from busi_utils.stage1.augment import MaskConfidence, ScanLighting, ultrasound_multichannel

    def extra(kinds, mask_aug):
        return [
            t for t in ultrasound_multichannel(64, kinds, mask_aug) if isinstance(t, (ScanLighting, MaskConfidence))
        ]

    assert extra(["pred_mask"], False) == []
    light = extra(["image", "pred_mask"], False)
    assert len(light) == 1 and isinstance(light[0], ScanLighting) and light[0].channel == 0
    both = extra(["image", "pred_mask"], True)
    assert [type(t).__name__ for t in both] == ["ScanLighting", "MaskConfidence"] and both[1].channels == (1,)
    assert [type(t).__name__ for t in extra(["image", "gt_mask"], True)] == ["ScanLighting"]
    assert [t.channels for t in extra(["pred_mask"], True)] == [(0,)]


def test_the_kept_epoch_is_the_best_of_the_last_phase_as_fastai_restores_it():
    import pandas as pd

    history = pd.DataFrame(
        {"phase": ["frozen", "all", "all", "all"], "f1_score": [0.9, 0.5, 0.7, 0.6]}  # the frozen epoch scores best
    )
    assert cls.kept_epoch(history, keep_best=True) == 2  # SaveModelCallback restarted at the second fit
    assert cls.kept_epoch(history, keep_best=False) == 3
    assert cls.kept_epoch(history.assign(phase="all"), keep_best=True) == 0
