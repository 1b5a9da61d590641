"""The memory layout the networks run in on the CPU: channels last (NHWC).

PyTorch stores a batch as N, C, H, W by default. oneDNN, the CPU backend behind ``conv2d``,
runs EfficientNet's depthwise convolutions much faster when the channels are the innermost
dimension. Measured on this project's 2-core machine (EfficientNet-Lite0, 2 channels, 96 px,
batch 32): a training step 0.76-0.91 s -> 0.49-0.56 s (about 1.5x), a forward pass
0.13-0.18 s -> 0.10-0.12 s; the light U-Net predicts about 1.5x faster too.

What the layout changes: for a *trained* model, where the numbers live in memory, not which
numbers they are (its predictions agree with the default layout to float rounding,
tests/test_layout.py). For *training*, the rounding differs at every step and compounds, as it
does between two machines: a model retrained in this layout is another model of the same
recipe and seed, within the spread over seeds, not the same weights.

Stage 2 trains in it on the CPU through fastai's own callback
(``learn.to_channelslast(use_amp=False)``). Every torch inference path
(:func:`busi_utils.stage1.predict.predict_probs`,
:func:`busi_utils.stage2.classification.predict_proba`, the inference graphs of
``busi_utils.stage2.graphs``) converts its model with :func:`channels_last`, in place; the ONNX
graphs exported from them carry no layout (onnxruntime chooses its own). Stage 1 trains in the
default layout: there the gain was within the machine's noise (0.53-0.58 s -> 0.46-0.51 s a
step), and its recipe was measured as it is.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 4-D weights in channels-last layout (in place, like ``Module.to``;
    idempotent). Inputs may stay in the default layout: a convolution with channels-last
    weights returns a channels-last output, so the layout carries on through the network."""
    return model.to(memory_format=torch.channels_last)
