"""Augmentations that respect ultrasound, shared by both stages.

Left-right flips are fine; up-down flips are not (the transducer is at the top and acoustic
shadows fall downwards). Small rotations and zooms move every channel together (fastai's
``aug_transforms``); brightness and contrast (gain differs between machines) touch the scan
only, never a mask channel.

(No ``from __future__ import annotations`` here: fastai dispatches ``encodes`` on the real
type annotation.)
"""
import torch
from fastai.vision.all import TensorImage, Transform
from fastai.vision.augment import aug_transforms


def geometric(size: int, lighting: float = 0.0) -> list:
    """fastai batch transforms: horizontal flips, rotation <= 10°, zoom <= 1.1, optional lighting."""
    return aug_transforms(do_flip=True, flip_vert=False, max_rotate=10.0, max_zoom=1.1, max_lighting=lighting,
                          max_warp=0.0, p_affine=0.75, p_lighting=0.75, size=size)


class ScanLighting(Transform):
    """Random gain and offset on channel 1 (the scan) of a multi-channel TensorImage batch;
    training batches only (``split_idx = 0``)."""

    split_idx, order = 0, 50

    def __init__(self, gain=(0.75, 1.3), shift=0.1):
        super().__init__()
        self.gain, self.shift = gain, shift

    def encodes(self, x: TensorImage):
        b = x.shape[0]
        gain = torch.empty(b, 1, 1, device=x.device).uniform_(*self.gain)
        shift = torch.empty(b, 1, 1, device=x.device).uniform_(-self.shift, self.shift)
        x = x.clone()
        x[:, 0] = ((x[:, 0] - 0.5) * gain + 0.5 + shift).clamp(0, 1)
        return x


def ultrasound_segmentation(size: int) -> list:
    """Image + mask: geometry on both (fastai interpolates masks with nearest), lighting on the image."""
    return geometric(size, lighting=0.3)


def ultrasound_multichannel(size: int, has_scan: bool = True) -> list:
    """Scan + mask channels: geometry on all channels, lighting on the scan only."""
    return geometric(size) + ([ScanLighting()] if has_scan else [])
