"""Augmentations that respect ultrasound, shared by both stages.

Left-right flips are fine; up-down flips are not (the transducer is at the top and acoustic
shadows fall downwards). Small rotations and zooms move every channel together (fastai's
``aug_transforms``); brightness and contrast (gain differs between machines) touch the scan
only, never a mask channel.

(No ``from __future__ import annotations`` here: fastai dispatches ``encodes`` on the real
type annotation.)
"""

import torch
import torch.nn.functional as F
from fastai.vision.all import TensorImage, Transform
from fastai.vision.augment import aug_transforms


def geometric(size: int, lighting: float = 0.0) -> list:
    """fastai batch transforms: horizontal flips, rotation <= 10°, zoom <= 1.1, optional lighting."""
    return aug_transforms(
        do_flip=True,
        flip_vert=False,
        max_rotate=10.0,
        max_zoom=1.1,
        max_lighting=lighting,
        max_warp=0.0,
        p_affine=0.75,
        p_lighting=0.75,
        size=size,
    )


class ScanLighting(Transform):
    """Random gain and offset on the scan channel (``channel``) of a multi-channel TensorImage
    batch; training batches only (``split_idx = 0``)."""

    split_idx, order = 0, 50

    def __init__(self, gain=(0.75, 1.3), shift=0.1, channel: int = 0):
        super().__init__()
        self.gain, self.shift, self.channel = gain, shift, channel

    def encodes(self, x: TensorImage):
        b = x.shape[0]
        gain = torch.empty(b, 1, 1, device=x.device).uniform_(*self.gain)
        shift = torch.empty(b, 1, 1, device=x.device).uniform_(-self.shift, self.shift)
        x = x.clone()
        c = self.channel
        x[:, c] = ((x[:, c] - 0.5) * gain + 0.5 + shift).clamp(0, 1)
        return x


class MaskConfidence(Transform):
    """Random changes of a predicted-mask channel's *confidence*, not of its shape: each mask
    becomes ``p ** gamma`` (log-uniform gamma in [1/spread, spread]; > 1 fainter, < 1 bolder) and,
    with probability ``p_binary``, is thresholded at 0.5. A mask's confidence depends on the
    U-Net and the scanner; the lesion's position and outline are what the classifier should use.
    Training batches only."""

    split_idx, order = 0, 51

    def __init__(self, channels=(1,), spread: float = 2.0, p_binary: float = 0.2):
        super().__init__()
        self.channels, self.spread, self.p_binary = tuple(channels), spread, p_binary

    def encodes(self, x: TensorImage):
        if not self.channels:
            return x
        b = x.shape[0]
        log_gamma = torch.empty(b, 1, 1, device=x.device).uniform_(-1, 1) * torch.log(torch.tensor(self.spread))
        binary = torch.rand(b, 1, 1, device=x.device) < self.p_binary
        x = x.clone()
        for c in self.channels:
            p = x[:, c].clamp(0, 1) ** torch.exp(log_gamma)
            x[:, c] = torch.where(binary, (p >= 0.5).float(), p)
        return x


class RandomMirror(Transform):
    """Left-right mirror of a random half of a training batch, every channel alike (the plain
    recipe's only geometric augmentation: no resampling, so no blur)."""

    split_idx, order = 0, 40

    def encodes(self, x: TensorImage):
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


class ScanGamma(Transform):
    """Random gamma (log-uniform in exp(+-``log_gamma``)), gain (1 +- ``gain``) and bias
    (+- ``bias``) on the scan channels ``channels`` only, clamped to [0, 1]: what differs between
    machines' and sonographers' settings. Training batches only."""

    split_idx, order = 0, 50

    def __init__(self, channels=(0,), log_gamma: float = 0.2, gain: float = 0.15, bias: float = 0.05):
        super().__init__()
        self.channels, self.log_gamma, self.gain, self.bias = tuple(channels), log_gamma, gain, bias

    def encodes(self, x: TensorImage):
        b = x.shape[0]

        def draw(half_width: float) -> torch.Tensor:
            return torch.empty(b, 1, 1, device=x.device).uniform_(-half_width, half_width)

        gamma, gain, bias = torch.exp(draw(self.log_gamma)), 1 + draw(self.gain), draw(self.bias)
        x = x.clone()
        for c in self.channels:
            x[:, c] = (x[:, c].clamp(0, 1) ** gamma * gain + bias).clamp(0, 1)
        return x


class ScannerShift(Transform):
    """What another scanner and its settings change, drawn per training scan on channel
    ``channel`` (the scan, in [0, 1]; a mask is never touched), each with probability ``p``:

    * a depth-gain curve (time-gain compensation set otherwise): gain ``exp(a * (depth - 1/2))``
      down the rows, ``a`` uniform in +-``tgc``;
    * gamma, log-uniform in ``exp(+-log_gamma)``;
    * speckle: multiplicative Gaussian noise of SD up to ``speckle``;
    * lower resolution: the batch's chosen scans down-sampled by up to ``max_down`` and back.

    The ``usaugment`` package (Albumentations) implements depth attenuation, shadows, haze and
    speckle reduction per image in NumPy and needs each scan's fan-shaped region mask, which
    BUSI and BUS-UCLM do not ship; these batch-level equivalents run inside fastai's pipeline
    at once for the batch. Training batches only."""

    split_idx, order = 0, 45

    def __init__(self, channel: int = 0, p: float = 0.5, tgc: float = 0.8, log_gamma: float = 0.3,
                 speckle: float = 0.15, max_down: float = 2.0):  # fmt: skip
        super().__init__()
        self.channel, self.p, self.tgc, self.log_gamma, self.speckle, self.max_down = (
            channel, p, tgc, log_gamma, speckle, max_down)  # fmt: skip

    def _chosen(self, b: int, device) -> torch.Tensor:
        return (torch.rand(b, 1, 1, device=device) < self.p).float()

    def encodes(self, x: TensorImage):
        b, c, h, w = x.shape
        dev, k = x.device, self.channel
        scan = x[:, k].clamp(0, 1)
        depth = torch.linspace(-0.5, 0.5, h, device=dev).view(1, h, 1)
        slope = torch.empty(b, 1, 1, device=dev).uniform_(-self.tgc, self.tgc) * self._chosen(b, dev)
        scan = scan * torch.exp(slope * depth)
        gamma = torch.exp(
            torch.empty(b, 1, 1, device=dev).uniform_(-self.log_gamma, self.log_gamma) * self._chosen(b, dev)
        )
        scan = scan.clamp(0, 1) ** gamma
        sd = torch.empty(b, 1, 1, device=dev).uniform_(0, self.speckle) * self._chosen(b, dev)
        scan = scan * (1 + sd * torch.randn_like(scan))
        factor = float(torch.empty(1).uniform_(1, self.max_down))
        small = F.interpolate(scan[:, None], scale_factor=1 / factor, mode="bilinear", align_corners=False)
        blurred = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        down = self._chosen(b, dev)
        scan = down * blurred + (1 - down) * scan
        x = x.clone()
        x[:, k] = scan.clamp(0, 1)
        return x


SCAN_KINDS = ("image", "crop")  # channels that hold ultrasound pixels (lighting applies); masks do not


def mirror_and_gamma(kinds) -> list:
    """The ``aug: scan`` recipe: mirror every channel, gamma/gain/bias on the scan channels."""
    return [RandomMirror(), ScanGamma(channels=[k for k, kind in enumerate(kinds) if kind in SCAN_KINDS])]


def mirror_and_scanner(kinds) -> list:
    """The ``aug: scanner`` recipe for stage 2: :func:`mirror_and_gamma`, and :class:`ScannerShift`
    on the scan channel (the whole scan, or the lesion crop; never a mask). Each course view has
    one scan channel; a crop's rows still run down the depth, over a part of it, so the depth-gain
    curve keeps its direction there."""
    scans = [k for k, kind in enumerate(kinds) if kind in SCAN_KINDS]
    return [*mirror_and_gamma(kinds), *(ScannerShift(channel=k) for k in scans)]


def ultrasound_segmentation(size: int, scanner: bool = False) -> list:
    """Image + mask: geometry on both (fastai interpolates masks with nearest), lighting on the
    image, and with ``scanner`` :class:`ScannerShift` on the image."""
    return [*geometric(size, lighting=0.3), *([ScannerShift()] if scanner else [])]


def ultrasound_multichannel(size: int, kinds=("image", "pred_mask"), mask_aug: bool = False) -> list:
    """Scan + mask channels (``kinds`` names each channel): geometry on all channels, lighting on
    the scan channel only, and, with ``mask_aug``, :class:`MaskConfidence` on predicted masks."""
    kinds = list(kinds)
    tfms = geometric(size)
    if "image" in kinds:
        tfms.append(ScanLighting(channel=kinds.index("image")))
    if mask_aug and "pred_mask" in kinds:
        tfms.append(MaskConfidence(channels=[k for k, kind in enumerate(kinds) if kind == "pred_mask"]))
    return tfms
