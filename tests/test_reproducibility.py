"""Same seed, same numbers:  both stages trained twice with one seed give identical weights,
and another seed gives other weights (on this machine's CPU; across machines, float
differences compound in training, which is why the course's claims rest on several seeds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_course_classifier_recipe

from busi_utils.data import dedup, preprocess, splits
from busi_utils.stage1 import segmentation as seg
from busi_utils.stage2 import classification as cls


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny_store(synthetic_index):
    groups = dedup.group_duplicates(synthetic_index, dedup.find_duplicate_pairs(synthetic_index, progress=False))
    split = splits.make_split(groups, n_folds=3, seed=0)
    return split, preprocess.ArrayStore(preprocess.resized_arrays(synthetic_index, 32, progress=False))


def test_a_unet_trained_twice_with_one_seed_has_the_same_weights(tiny_store):
    split, store = tiny_store
    train_ids, watched = seg.fold_ids(split, 0)
    recipe = {"arch": "light", "base": 4, "size": 32, "epochs": 2, "batch_size": 8, "lr": 3e-3, "loss": "dice_bce"}
    runs = [seg.train_segmenter(store, train_ids, watched, recipe, s, show_progress=False) for s in (0, 0, 1)]
    assert _same_weights(runs[0][0], runs[1][0])
    assert runs[0][1]["dice"].tolist() == runs[1][1]["dice"].tolist()  # the watched scores too
    assert not _same_weights(runs[0][0], runs[2][0])


def test_a_classifier_trained_twice_with_one_seed_gives_the_same_probabilities():
    rng = np.random.default_rng(0)
    x = rng.random((48, 2, 32, 32), dtype=np.float32)
    y = np.array(["normal", "benign", "malignant"] * 16)
    recipe = tiny_course_classifier_recipe()
    runs = [cls.train_classifier(x[:36], y[:36], x[36:], y[36:], recipe, s, show_progress=False) for s in (0, 0, 1)]
    probs = [cls.predict_proba(model, x[36:], info["stats"]) for model, _, info in runs]
    assert _same_weights(runs[0][0], runs[1][0]) and np.array_equal(probs[0], probs[1])
    assert not np.allclose(probs[0], probs[2])
