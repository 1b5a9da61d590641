"""Pixels in, pixels out: the image conversions that training and inference share.

NumPy and Pillow only (no torch, no pandas), so the light inference path imports this module
and still sees exactly the pixels training saw: the same grayscale conversion, the same
resizing, the same 8-bit storage of a predicted mask.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from busi_utils.core.errors import InputError

MIN_SIDE = 64  # smaller cannot hold a lesion at the U-Net's resolution
MAX_SIDE = 5000  # larger is not an ultrasound frame; refused before decoding (memory)
MAX_BYTES = 20 * 1024 * 1024  # a file or upload above this is refused unread (the web page caps uploads too)


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Square ``size`` x ``size``: bilinear (antialiased) for the image, nearest for the mask.
    Used for training *and* inference, so both see the same pixels."""
    img = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    if mask is None:
        return img, None
    m = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 127
    return img, m


def resize_prob(prob: np.ndarray, size: int) -> np.ndarray:
    """Resize a probability map (bilinear), keeping it a probability."""
    if prob.shape == (size, size):
        return prob.astype(np.float32)
    return np.asarray(Image.fromarray(prob.astype(np.float32)).resize((size, size), Image.BILINEAR), dtype=np.float32)


def prob_to_uint8(prob: np.ndarray) -> np.ndarray:
    """The 8-bit form masks are stored in (and the Predictor uses, so both see the same values)."""
    return np.round(np.clip(prob, 0, 1) * 255).astype(np.uint8)


PRESENCE_WINDOW = 1  # the patch side (px at the U-Net's size) of the lesion confidence; 1: the highest pixel


def lesion_confidence(probs: np.ndarray, window: int = PRESENCE_WINDOW) -> np.ndarray:
    """Stage 1's answer to "is there a lesion?" per probability map (``(H, W)`` or ``(N, H, W)``):
    the highest mean probability over a ``window`` x ``window`` patch (1: the highest pixel). A
    speck of a few painted pixels averages down; a lesion the size of the patch does not. Computed
    with an integral image (NumPy only: the Predictor's light path loads no SciPy)."""
    p = np.asarray(probs, dtype=np.float64)
    single = p.ndim == 2
    p = p[None] if single else p
    k = int(min(window, *p.shape[1:]))
    if k <= 1:
        out = p.reshape(len(p), -1).max(1)
    else:
        c = np.pad(p, ((0, 0), (1, 0), (1, 0))).cumsum(1).cumsum(2)
        sums = c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]
        out = sums.reshape(len(p), -1).max(1) / (k * k)
    return out[0] if single else out


def overlay(image: np.ndarray, mask: np.ndarray, color=(1.0, 0.2, 0.2), alpha: float = 0.4) -> np.ndarray:
    """RGB float image with ``mask`` (bool or probability) tinted over a grayscale ``image``."""
    rgb = np.repeat((image.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    m = mask.astype(np.float32)[..., None] * alpha
    return np.clip(rgb * (1 - m) + np.array(color, dtype=np.float32) * m, 0, 1)


def overlay_uint8(image: np.ndarray, mask: np.ndarray, color=(255, 51, 51), alpha: float = 0.4) -> np.ndarray:
    """:func:`overlay` for a boolean mask, as 8-bit RGB, touching only the masked pixels: the
    form written to disk for every prediction, so it is the fast one."""
    rgb = np.repeat(image[..., None], 3, axis=2)
    sel = rgb[mask].astype(np.float32)
    rgb[mask] = np.round(sel * (1 - alpha) + np.asarray(color, np.float32) * alpha).astype(np.uint8)
    return rgb


def check_size(width: int, height: int, name: str) -> None:
    """Refuse an image whose sides are outside [MIN_SIDE, MAX_SIDE], from its header alone."""
    if max(width, height) > MAX_SIDE:
        raise InputError(f"{name}: image too large ({width}x{height} px; at most {MAX_SIDE} px per side)")
    if min(width, height) < MIN_SIDE:
        raise InputError(
            f"{name}: image too small to hold a lesion ({width}x{height} px; at least {MIN_SIDE} px per side)"
        )


def _check_bytes(n_bytes: int, name: str) -> None:
    if n_bytes > MAX_BYTES:
        raise InputError(f"{name}: file too large ({n_bytes / 2**20:.0f} MB; at most {MAX_BYTES // 2**20} MB)")


def open_image(data: bytes, name: str) -> Image.Image:
    """Decode image bytes, reading the size from the header first: a 100 KB PNG that claims
    20000 x 20000 px is refused before it can take gigabytes of memory."""
    if not data:
        raise InputError(f"{name}: empty file")
    _check_bytes(len(data), name)
    try:
        with warnings.catch_warnings():  # between 89 M and 179 M pixels Pillow only warns; check_size refuses it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except UnidentifiedImageError:
        raise InputError(f"{name}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError:
        raise InputError(
            f"{name}: image too large (its header claims more than {Image.MAX_IMAGE_PIXELS * 2} pixels)"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{name}: unreadable image header ({err})") from None
    check_size(*image.size, name)
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{name}: unreadable or truncated image ({err})") from None
    return image


def to_grayscale(image) -> np.ndarray:
    """A path, bytes, PIL image or array -> grayscale uint8 (H, W), the way training saw BUSI.

    Accepts RGB, RGBA, palette, 8- and 16-bit grayscale, JPEG. Rejects what cannot be analysed
    with :class:`~busi_utils.core.errors.InputError` naming the file and the problem.
    """
    name = str(image) if isinstance(image, (str, os.PathLike)) else "<image>"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        _check_bytes(path.stat().st_size, str(path))  # before reading it into memory
        image = open_image(path.read_bytes(), str(path))
    elif isinstance(image, (bytes, bytearray, memoryview)):
        image = open_image(bytes(image), name)
    if isinstance(image, Image.Image):
        check_size(*image.size, name)
        gray = _pil_to_gray(image)
    else:
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[2] in (3, 4):
            gray = np.asarray(Image.fromarray(arr[..., :3].astype(np.uint8)).convert("L"))
        elif arr.ndim == 2:
            gray = arr.astype(np.uint8) if arr.dtype == np.uint8 else _to_uint8(arr.astype(np.float32))
        else:
            raise InputError(f"{name}: array of shape {arr.shape} is not an image")
        check_size(gray.shape[1], gray.shape[0], name)
    return gray


def _pil_to_gray(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _to_uint8(np.asarray(image, dtype=np.float32))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.asarray(image.convert("L"))


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """High-bit-depth gray to 8 bits by the bit depth in use (8, 12 or 16 bits), not by
    stretching min-max: a scan's contrast stays what the machine recorded."""
    top = float(arr.max())
    full = 255.0 if top <= 255 else 4095.0 if top <= 4095 else 65535.0
    return np.clip(np.round(arr / full * 255), 0, 255).astype(np.uint8)
