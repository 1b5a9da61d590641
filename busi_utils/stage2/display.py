"""How fastai shows the classifiers' inputs, so that its own views work on them: ``show_batch``,
``learn.show_results`` and ``ClassificationInterpretation.plot_top_losses``.

fastai draws a ``TensorImage`` of one or three channels. The method's input has two (the scan and
the predicted mask), which fastai cannot draw; :class:`ScanWithMask` is a ``TensorImage`` that
draws the first channel in grey and outlines the second one (the mask, at 0.5) in cyan. fastai's
transforms keep the subclass through augmentation, normalisation and decoding.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from fastai.torch_core import TensorImage


class ScanWithMask(TensorImage):
    """A classifier input (C, S, S): channel 0 the scan (or the lesion view), channel 1 (if
    any) a mask, drawn as an outline on the scan."""

    def show(self, ctx=None, **kwargs):
        t = self.detach().cpu().float()
        ax = ctx if ctx is not None else plt.subplots(figsize=kwargs.get("figsize", (3, 3)))[1]
        ax.imshow(t[0].numpy(), cmap="gray", vmin=0, vmax=1)
        if len(t) > 1 and float(t[1].max()) >= 0.5 > float(t[1].min()):
            ax.contour(t[1].numpy(), levels=[0.5], colors="cyan", linewidths=1)
        if kwargs.get("title"):
            ax.set_title(kwargs["title"])
        ax.axis("off")
        return ax
