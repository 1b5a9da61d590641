"""fastai's own views work on the classifiers' 2-channel inputs: show_batch, show_results and
ClassificationInterpretation.plot_top_losses, read from an already trained model."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from busi_utils.stage2 import classification as cls  # noqa: E402
from busi_utils.stage2.display import ScanWithMask  # noqa: E402


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


def arrays(n: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 2, 16, 16), dtype=np.float32)
    x[:, 1] = 0
    x[:, 1, 4:10, 4:10] = 1  # a square "mask"
    y = [("normal", "benign", "malignant")[i % 3] for i in range(n)]
    return x, y


def test_a_two_channel_input_draws_the_scan_with_the_mask_outline():
    x, _ = arrays(1, 0)
    ax = ScanWithMask(torch.from_numpy(x[0])).show()
    assert len(ax.images) == 1 and ax.images[0].get_array().shape == (16, 16)  # the scan, in grey
    assert len(ax.collections) >= 1  # the mask's outline
    plt.close("all")


def test_fastai_reads_a_trained_member_as_the_course_predicts_it():
    from fastai.interpret import ClassificationInterpretation

    (x_tr, y_tr), (x_va, y_va) = arrays(12, 1), arrays(7, 2)
    info = {
        "recipe": {"batch_size": 4, "aug": "scan", "label_smoothing": 0.1},
        "stats": [[0.5, 0.5], [0.5, 0.5]],
        "balance": "weighted_loss",
        "seed": 0,
        "variant": "image+pred_mask",
    }
    model = tiny_classifier()
    learn = cls.reading_learner(model, info, x_tr, y_tr, x_va, y_va)
    assert isinstance(learn.dls.one_batch()[0], ScanWithMask)  # the type survives augmentation and normalisation
    interp = ClassificationInterpretation.from_learner(learn)
    preds, _ = learn.get_preds(dl=interp.dl)  # fastai's pipeline: its normalisation, its softmax
    assert np.allclose(preds.numpy(), cls.predict_proba(model, x_va, info["stats"]), atol=1e-6)
    assert len(interp.losses) == len(y_va)
    interp.plot_top_losses(3)
    assert len(plt.gcf().axes) >= 3
    learn.show_results(max_n=2)
    assert len(plt.gcf().axes) >= 2
    plt.close("all")
