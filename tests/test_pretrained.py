"""Transfer learning: the pinned package's weights are ImageNet's, load by name into timm's
network, never come from the network, and feed both stages (and the gpu profile's sizes)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from busi_utils.core import config
from busi_utils.stage1 import pretrained, training
from busi_utils.stage1 import segmentation as seg
from busi_utils.stage2 import classification as cls


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: weights must come from the package."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _hopper():
    from matplotlib import cbook
    from PIL import Image

    return Image.open(cbook.get_sample_data("grace_hopper.jpg"))


def test_weights_are_imagenet_military_uniform_on_grace_hopper(no_network):
    x = pretrained.imagenet_preprocess(_hopper())
    with torch.no_grad():
        p = torch.softmax(pretrained.create_lite0().eval()(x), 1)[0]
        p_random = torch.softmax(pretrained.create_lite0(pretrained=False).eval()(x), 1)[0]
    assert int(p.argmax()) == 652 and float(p[652]) > 0.3  # "military uniform"
    assert float(p_random[652]) < 0.05  # the same network without the weights knows nothing


def test_names_are_mapped_explicitly():
    import timm

    blocks = pretrained._block_positions(timm.create_model(pretrained.ARCH, pretrained=False))
    assert len(blocks) == 16
    assert pretrained.timm_key("_conv_stem.weight", blocks) == "conv_stem.weight"
    assert pretrained.timm_key("_blocks.0._project_conv.weight", blocks) == "blocks.0.0.conv_pw.weight"  # no expansion
    assert pretrained.timm_key("_blocks.3._expand_conv.weight", blocks) == "blocks.2.0.conv_pw.weight"
    assert pretrained.timm_key("_blocks.3._bn2.running_var", blocks) == "blocks.2.0.bn3.running_var"
    assert pretrained.timm_key("_bn1.bias", blocks) == "bn2.bias"
    with pytest.raises(pretrained.PretrainedWeightsError, match="_blocks.3._se_reduce"):
        pretrained.timm_key("_blocks.3._se_reduce.weight", blocks)
    with pytest.raises(pretrained.PretrainedWeightsError, match="block 16"):
        pretrained.timm_key("_blocks.16._bn1.weight", blocks)


def test_a_tensor_of_the_wrong_shape_fails_loudly(tmp_path):
    raw = torch.load(pretrained.weights_path(), map_location="cpu", weights_only=True)
    raw["_blocks.5._depthwise_conv.weight"] = raw["_blocks.5._depthwise_conv.weight"][:-1]
    bad = tmp_path / "bad.pth"
    torch.save(raw, bad)
    import timm

    model = timm.create_model(pretrained.ARCH, pretrained=False)
    with pytest.raises(
        pretrained.PretrainedWeightsError,
        match=r"_blocks\.5\._depthwise_conv\.weight -> blocks\.3\.0\.conv_dw\.weight: shape",
    ):
        pretrained.load_imagenet_weights(model, path=bad)


def test_one_channel_stem_sees_a_gray_scan_as_the_rgb_stem_sees_it():
    """timm's rule for n_in=1 sums the RGB filters: a gray image gives the same activations."""
    rgb, gray = pretrained.create_lite0(3).eval(), pretrained.create_lite0(1).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(gray.conv_stem(x), rgb.conv_stem(x.repeat(1, 3, 1, 1)), atol=1e-5)
    w = rgb.conv_stem.weight
    assert torch.allclose(pretrained.adapt_first_conv(w, 2), w[:, :2] * 1.5)  # fastai's and timm's rule for 2


def test_unet_encoder_is_pretrained_and_split_from_the_new_layers():
    model = seg.build_segmenter("lite0", verbose=False)
    reference = pretrained.create_lite0(1, features_only=True)
    assert torch.equal(model.encoder.conv_stem.weight, reference.conv_stem.weight)
    assert not torch.equal(
        seg.build_segmenter("lite0", pretrained=False, verbose=False).encoder.conv_stem.weight,
        reference.conv_stem.weight,
    )
    encoder, new = seg.encoder_decoder_split(model)
    assert len(encoder) + len(new) == len(list(model.parameters()))
    assert {id(p) for p in new} >= {id(p) for p in model.head.parameters()}
    assert model(torch.rand(2, 1, 96, 96)).shape == (2, 1, 96, 96)


def test_freezing_trains_only_the_decoder():
    """fastai's ``freeze`` through the course's splitter: one step of training moves the
    decoder and leaves the pretrained encoder's convolutions as they were (fastai keeps
    BatchNorm trainable, ``train_bn``, so only its layers may move in the encoder)."""
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner

    torch.manual_seed(0)
    model = seg.build_segmenter("lite0", verbose=False)
    items = [(torch.rand(1, 64, 64), (torch.rand(1, 64, 64) > 0.7).float()) for _ in range(4)]
    dls = DataLoaders(DataLoader(items, bs=2, shuffle=False), DataLoader(items[:2], bs=2), device="cpu")
    learn = Learner(dls, model, loss_func=seg.DiceBCELoss(), splitter=seg.encoder_decoder_split)
    convs = lambda m: {n: p.detach().clone() for n, p in m.named_parameters() if p.ndim == 4}  # noqa: E731
    enc0, dec0 = convs(model.encoder), convs(model.head)
    training.quiet(learn)
    learn.freeze()
    learn.fit(1, 1e-2)
    assert all(torch.equal(p, enc0[n]) for n, p in convs(model.encoder).items())
    assert any(not torch.equal(p, dec0[n]) for n, p in convs(model.head).items())
    learn.unfreeze()
    learn.fit(1, 1e-2)
    assert any(not torch.equal(p, enc0[n]) for n, p in convs(model.encoder).items())  # a negative control


def test_classifier_body_is_pretrained_for_two_channels():
    model = cls.build_classifier("lite0", 2)
    stem = pretrained.create_lite0(2, num_classes=0, global_pool="").conv_stem.weight
    assert torch.equal(model[0].conv_stem.weight, stem)
    assert model.eval()(torch.rand(3, 2, 96, 96)).shape == (3, len(config.CLASSES))


def test_fine_tune_recipe_counts_both_phases():
    assert training.uses_fine_tune({"pretrained": True, "freeze_epochs": 1, "epochs": 5})
    assert not training.uses_fine_tune({"pretrained": False, "freeze_epochs": 1, "epochs": 5})
    assert training.total_epochs({"pretrained": True, "freeze_epochs": 1, "epochs": 5}) == 6
    assert training.total_epochs({"pretrained": False, "freeze_epochs": 1, "epochs": 5}) == 5


def test_gpu_profile_models_build_and_take_one_step_on_the_cpu(no_network):
    """The gpu profile cannot run here; its networks are built at small size and trained one step."""
    cfg = config.load_profile("gpu")
    net = seg.segmenter_from_recipe(dict(cfg["seg"], size=64))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.rand(2, 1, 64, 64), (torch.rand(2, 1, 64, 64) > 0.7).float()
    loss = seg.DiceBCELoss()(net(x), y)
    loss.backward()
    opt.step()
    assert np.isfinite(loss.item())
    model = cls.build_classifier(cfg["classify"]["arch"], 2, pretrained=cfg["classify"].get("pretrained"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(4, 2, 64, 64)), torch.tensor([0, 1, 2, 1]))
    loss.backward()
    opt.step()
    assert np.isfinite(loss.item())


def test_mask_confidence_changes_confidence_not_shape_nor_the_scan():
    from fastai.vision.all import TensorImage

    from busi_utils.stage1.augment import MaskConfidence

    torch.manual_seed(0)
    x = torch.zeros(64, 2, 32, 32)
    x[:, 0] = torch.rand(64, 32, 32)
    x[:, 1, 8:20, 8:20] = torch.linspace(0.2, 0.9, 12)
    out = MaskConfidence(channels=[1], spread=2.0, p_binary=0.3)(TensorImage(x), split_idx=0)
    assert torch.equal(out[:, 0], x[:, 0])  # the scan is untouched
    assert not ((out[:, 1] > 0) & (x[:, 1] == 0)).any()  # nothing painted outside the predicted lesion
    assert (out[:, 1, 8:20, 8:20] - x[:, 1, 8:20, 8:20]).abs().max() > 0.1  # confidence did change
    flat_out = out[:, 1, 10, 8:20]
    assert bool((flat_out[:, 1:] >= flat_out[:, :-1]).all())  # monotone: the ordering of pixels is kept
    assert torch.equal(MaskConfidence(channels=[1])(TensorImage(x), split_idx=1), x)  # never at validation


def test_grad_cam_on_the_pretrained_classifier():
    from busi_utils.evaluation import explain

    torch.manual_seed(0)
    model = cls.build_classifier("lite0", 2).eval()
    x = np.random.default_rng(0).random((2, 96, 96)).astype(np.float32)
    cam, target = explain.grad_cam(model, x, ([0.3, 0.1], [0.2, 0.2]))
    assert cam.shape == (96, 96) and 0 <= cam.min() and cam.max() <= 1 and target in range(3)
    assert explain._last_conv_stage(model) is model[0].bn2
