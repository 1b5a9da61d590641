"""The networks run in channels-last layout on the CPU (``busi_utils.core.layout``): stage 2 trains
in it, every inference path converts to it, and the layout changes no answer beyond float rounding."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import tiny_course_classifier_recipe

from busi_utils.core.layout import channels_last
from busi_utils.stage1 import predict as seg_predict
from busi_utils.stage1.unet import LightUNet
from busi_utils.stage2 import classification as cls
from busi_utils.stage2.graphs import ClassifierGraph, SegmenterGraph
from busi_utils.stage2.networks import build_classifier

CL = torch.channels_last


def _is_channels_last(model: torch.nn.Module) -> bool:
    convs = [p for p in model.parameters() if p.dim() == 4]
    return bool(convs) and all(p.is_contiguous(memory_format=CL) for p in convs)


def test_channels_last_changes_the_layout_not_the_numbers():
    torch.manual_seed(0)
    model = build_classifier("lite0", 2, pretrained=False, head="linear").eval()
    default = copy.deepcopy(model)
    x = torch.rand(4, 2, 64, 64)
    assert not _is_channels_last(default)
    assert channels_last(model) is model and _is_channels_last(model)  # in place, like Module.to
    with torch.no_grad():
        a, b = default(x), model(x)
    assert torch.allclose(a, b, atol=1e-5)  # the answers differ only by rounding


def test_every_inference_path_runs_channels_last_with_the_default_layouts_answers():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    classifier = build_classifier("lite0", 2, pretrained=False, head="linear").eval()
    reference = copy.deepcopy(classifier)
    x = rng.random((3, 2, 64, 64), dtype=np.float32)
    stats = [[0.5, 0.5], [0.5, 0.5]]
    probs = cls.predict_proba(classifier, x, stats, n_views=2)
    assert _is_channels_last(classifier)
    with torch.no_grad():
        xb = (torch.from_numpy(x) - 0.5) / 0.5
        expected_probs = ((torch.softmax(reference(xb), 1) + torch.softmax(reference(xb.flip(-1)), 1)) / 2).numpy()
    np.testing.assert_allclose(probs, expected_probs, atol=1e-5)

    unet = LightUNet(base=4).eval()
    unet_reference = copy.deepcopy(unet)
    images = rng.integers(0, 256, (2, 32, 32), dtype=np.uint8)
    masks = seg_predict.predict_probs(unet, images, (0.5, 0.25), flip=True)
    assert _is_channels_last(unet) and not _is_channels_last(unet_reference)
    with torch.no_grad():
        z = (torch.from_numpy(images).float().div(255).unsqueeze(1) - 0.5) / 0.25
        expected = (torch.sigmoid(unet_reference(z)) + torch.sigmoid(unet_reference(z.flip(-1))).flip(-1)) / 2
    np.testing.assert_allclose(masks, expected.squeeze(1).numpy(), atol=1e-5)

    seg_graph = SegmenterGraph([copy.deepcopy(unet_reference)], [(0.5, 0.25)], flip=True, size=32)
    view_graph = ClassifierGraph([copy.deepcopy(reference)], stats, 2, 64)
    assert all(_is_channels_last(m) for m in [*seg_graph.unets, *view_graph.bodies])
    with torch.no_grad():
        np.testing.assert_allclose(seg_graph(z * 0.25 + 0.5).squeeze(1).numpy(), masks, atol=1e-5)
        np.testing.assert_allclose(view_graph(torch.from_numpy(x))[0].numpy(), expected_probs, atol=1e-5)


@pytest.mark.parametrize("keep", ["last", "best"])
def test_stage_two_trains_in_channels_last(monkeypatch, keep):
    """fastai's ChannelsLast callback runs before training (not a conversion afterwards), and
    the model stays channels-last when fastai reloads the best epoch's weights."""
    from fastai.callback.channelslast import ChannelsLast

    layouts = []
    original = ChannelsLast.before_fit

    def spy(self):
        original(self)
        layouts.append(_is_channels_last(self.learn.model))

    monkeypatch.setattr(ChannelsLast, "before_fit", spy)
    rng = np.random.default_rng(0)
    x = rng.random((24, 2, 32, 32), dtype=np.float32)
    y = np.array(["normal", "benign", "malignant"] * 8)
    recipe = tiny_course_classifier_recipe(epochs=2, keep=keep)
    model, _, _ = cls.train_classifier(x[:16], y[:16], x[16:], y[16:], recipe, 0, show_progress=False)
    assert layouts == [True]  # one fit_one_cycle, the model channels-last before its first batch
    assert _is_channels_last(model)
