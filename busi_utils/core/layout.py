"""The memory layout the networks run in on the CPU: channels last (NHWC).

PyTorch stores a batch as N, C, H, W by default. oneDNN, the CPU backend behind ``conv2d``,
runs EfficientNet's depthwise convolutions much faster when the channels are the innermost
dimension. Measured on this project's 2-core machine (EfficientNet-Lite0, 2 channels, 96 px,
batch 32): a training step 0.91 s -> 0.56 s, a forward pass 0.18 s -> 0.12 s; the light U-Net
predicts 1.5x faster too. The layout changes where the numbers live in memory, not which numbers
they are: predictions agree with the default layout to float rounding (tests/test_layout.py).

Stage 2 trains in it through fastai's own callback (``learn.to_channelslast(use_amp=False)``);
every inference path (:func:`busi_utils.stage1.predict.predict_probs`,
:func:`busi_utils.stage2.classification.predict_proba`, the inference graphs) converts its
model with :func:`channels_last`. Stage 1 trains in the default layout: there the gain was
within the machine's noise (0.53 -> 0.51 s a step), and its recipe was measured as it is.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D weights in channels-last layout (in place, like ``Module.to``;
    idempotent). Inputs may stay in the default layout: the first convolution converts them."""
    return model.to(memory_format=torch.channels_last)
