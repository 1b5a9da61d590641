"""A seeded, BUSI-like synthetic dataset: same layout, names and quirks, no patients.

It drives the unit tests and the offline fallback, and is never presented as results.
What it imitates, on purpose:

* speckled tissue texture (multiplicative Rayleigh noise, smoothed) with depth attenuation;
* benign lesions: dark, smooth, oval; malignant: dark, irregular (spiculated) outline with an
  acoustic shadow below; normal: no lesion;
* RGB PNGs of varied sizes; masks in modes 1, RGB and RGBA; one image with an extra
  ``_mask_1``; an exact duplicate filed as benign *and* malignant (BUSI has one) and a
  resized near-duplicate, so the duplicate audit has something real to find.
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from busi_utils.core.files import atomic_path, atomic_write_json, read_json

DEFAULT_COUNTS = {"benign": 24, "malignant": 16, "normal": 12}


def _tissue(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    layers = ndimage.gaussian_filter(rng.normal(size=(h, w)), sigma=(h / 12, w / 6))
    base = 0.45 + 0.25 * layers / (np.abs(layers).max() + 1e-6)
    depth = np.linspace(1.0, 0.55, h)[:, None]  # attenuation with depth
    speckle = rng.rayleigh(scale=0.8, size=(h, w))
    return ndimage.gaussian_filter(base * depth * speckle, sigma=0.8)


def _lesion_mask(rng: np.random.Generator, h: int, w: int, malignant: bool) -> np.ndarray:
    cy, cx = rng.uniform(0.35, 0.6) * h, rng.uniform(0.3, 0.7) * w
    ry, rx = rng.uniform(0.08, 0.16) * h, rng.uniform(0.10, 0.22) * w
    yy, xx = np.mgrid[:h, :w]
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.ones_like(theta)
    if malignant:  # spiculated, irregular outline
        for k, amp in ((5, 0.18), (9, 0.12), (17, 0.08)):
            radius += amp * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    else:
        radius += 0.05 * np.sin(2 * theta + rng.uniform(0, 2 * np.pi))
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= radius**2


def synthetic_case(rng: np.random.Generator, label: str, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One grayscale image (uint8) and its lesion mask (bool) of class ``label``."""
    img = _tissue(rng, h, w)
    mask = np.zeros((h, w), dtype=bool)
    if label != "normal":
        mask = _lesion_mask(rng, h, w, malignant=label == "malignant")
        soft = ndimage.gaussian_filter(mask.astype(float), 1.5 if label == "benign" else 0.7)
        img = img * (1 - 0.75 * soft)
        if label == "malignant":  # posterior acoustic shadow
            cols = mask.any(axis=0)
            bottom = np.where(mask.any(axis=1))[0].max()
            shadow = np.zeros_like(img)
            shadow[bottom:, cols] = 0.5
            img = img * (1 - ndimage.gaussian_filter(shadow, 3))
        else:  # posterior enhancement under a cyst-like benign lesion
            cols = mask.any(axis=0)
            bottom = np.where(mask.any(axis=1))[0].max()
            enh = np.zeros_like(img)
            enh[bottom : bottom + h // 8, cols] = 0.25
            img = img * (1 + ndimage.gaussian_filter(enh, 3))
    return np.clip(img * 255, 0, 255).astype(np.uint8), mask


def _save_mask(mask: np.ndarray, path: Path, mode: str) -> None:
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    if mode == "1":
        img = img.convert("1")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    else:
        img = img.convert(mode)
    img.save(path)


def make_synthetic_busi(
    out_dir: os.PathLike | str,
    counts: dict[str, int] | None = None,
    seed: int = 0,
    size_range: tuple[int, int] = (160, 320),
) -> Path:
    """Write a synthetic ``Dataset_BUSI_with_GT`` under ``out_dir`` and return it.

    Idempotent: an existing complete dataset with the same parameters is reused. Files
    are written to a temporary folder and renamed into place, so a crash leaves nothing
    half-made.
    """
    counts = dict(counts or DEFAULT_COUNTS)
    out_dir = Path(out_dir)
    root = out_dir / "Dataset_BUSI_with_GT"
    params = {"counts": counts, "seed": seed, "size_range": list(size_range), "version": 1}
    if read_json(out_dir / "synthetic.json") == params and root.is_dir():
        return root
    rng = np.random.default_rng(seed)
    shutil.rmtree(out_dir, ignore_errors=True)
    with atomic_path(out_dir) as tmp:
        saved: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        for label, n in counts.items():
            folder = tmp / "Dataset_BUSI_with_GT" / label
            folder.mkdir(parents=True)
            saved[label] = []
            for i in range(1, n + 1):
                w = int(rng.integers(*size_range))
                h = int(rng.integers(int(0.8 * size_range[0]), int(0.8 * size_range[1])))
                img, mask = synthetic_case(rng, label, h, w)
                saved[label].append((img, mask))
                stem = f"{label} ({i})"
                Image.fromarray(img).convert("RGB").save(folder / f"{stem}.png")
                mode = ("1", "RGB", "RGBA")[i % 3] if label != "normal" else "L"
                _save_mask(mask, folder / f"{stem}_mask.png", mode)
        _add_quirks(tmp / "Dataset_BUSI_with_GT", saved, counts, rng)
        atomic_write_json(tmp / "synthetic.json", params)
    return root


def _add_quirks(root: Path, saved: dict, counts: dict, rng: np.random.Generator) -> None:
    """The BUSI quirks the course teaches about (needs >= 5 benign and >= 2 malignant)."""
    if counts.get("benign", 0) < 5 or counts.get("malignant", 0) < 2:
        return
    # 1. benign (1) has a second lesion in an extra mask: benign (1)_mask_1.png
    img, mask = saved["benign"][0]
    h, w = img.shape
    extra = np.zeros_like(mask)
    extra[int(0.75 * h) : int(0.85 * h), int(0.1 * w) : int(0.2 * w)] = True
    img2 = img.copy()
    img2[extra] = (img2[extra] * 0.3).astype(np.uint8)
    Image.fromarray(img2).convert("RGB").save(root / "benign" / "benign (1).png")
    _save_mask(extra, root / "benign" / "benign (1)_mask_1.png", "1")
    # 2. the last malignant image is a byte-identical copy of benign (2): a cross-label duplicate
    n_mal = counts["malignant"]
    for suffix in (".png", "_mask.png"):
        shutil.copyfile(root / "benign" / f"benign (2){suffix}", root / "malignant" / f"malignant ({n_mal}){suffix}")
    # 3. the last benign image is benign (3) resized and slightly cropped: a near-duplicate
    n_ben = counts["benign"]
    src = Image.open(root / "benign" / "benign (3).png")
    msk = Image.open(root / "benign" / "benign (3)_mask.png").convert("L")
    w, h = src.size
    box = (int(0.03 * w), int(0.03 * h), w - int(0.02 * w), h - int(0.02 * h))
    new = (int(w * 0.8), int(h * 0.8))
    src.crop(box).resize(new, Image.BILINEAR).save(root / "benign" / f"benign ({n_ben}).png")
    msk.crop(box).resize(new, Image.NEAREST).point(lambda v: 255 if v > 127 else 0).convert("1").save(
        root / "benign" / f"benign ({n_ben})_mask.png"
    )
    # 4. a coloured caliper mark on benign (4), as on some BUSI scans
    path = root / "benign" / "benign (4).png"
    arr = np.asarray(Image.open(path).convert("RGB")).copy()
    arr[10:14, 10:60] = (255, 255, 0)
    Image.fromarray(arr).save(path)


EXTERNAL_VERSION = "2"  # bump when the generator changes: a cached set of another version is rebuilt


def make_synthetic_external(
    root: os.PathLike | str, layout: str = "generic", seed: int = 7, n_patients: int = 8, per_patient: int = 4
) -> Path:
    """A small labelled external set in either layout of :mod:`busi_utils.data.external`, with the
    quirks the loader must handle: coloured masks (green benign, red malignant), JPEG scans
    (BUS-UCLM) or mixed formats, a mask of another size than its image (BUS-UCLM, as published), images without a mask
    (generic), a patient column. Returns the folder. Deterministic for a seed; built once."""
    root = Path(root)
    if (root / ".complete").exists() and (root / ".complete").read_text().strip() == EXTERNAL_VERSION:
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    labels = ["normal", "benign", "malignant"]
    for p in range(n_patients):
        patient = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, 4))
        for k in range(per_patient):
            label = labels[(p + k) % 3]
            h, w = int(rng.integers(180, 260)), int(rng.integers(220, 320))
            img, mask = synthetic_case(rng, label, h, w)
            stem = f"{patient}_{k:03d}"
            ext = ".jpg" if layout == "bus_uclm" or k % 2 else ".png"
            Image.fromarray(np.stack([img] * 3, axis=2)).save(root / "images" / f"{stem}{ext}")
            colour = {"benign": (0, 255, 0), "malignant": (255, 0, 0)}.get(label, (0, 0, 0))
            rgb = np.zeros((h, w, 3), np.uint8)
            rgb[mask] = colour
            m = Image.fromarray(rgb)
            if p == 0 and k == 1 and layout == "bus_uclm":  # as BUS-UCLM's 13 HESN masks: resized, counted
                m = m.resize((round(w * 1.1), round(h * 1.25)), Image.NEAREST)
            if not (layout == "generic" and p == 1 and k == 0):  # generic: one image has no mask
                m.save(root / "masks" / f"{stem}.png")
            rows.append({"image": f"{stem}{ext}", "label": label, "patient": patient})
    if layout == "bus_uclm":
        with open(root / "INFO.csv", "w", encoding="utf-8-sig", newline="") as fh:
            fh.write("Image;Resolution;Label;Doppler;Marks;Combined\n")
            for n, r in enumerate(rows):
                fh.write(
                    f"{r['image']};320x240;{r['label'].capitalize()};{'Yes' if n % 7 == 0 else 'No'};{'Yes' if n % 3 == 0 else 'No'};No\n"
                )
    else:
        with open(root / "labels.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["image", "label", "patient"])
            writer.writeheader()
            writer.writerows(rows)
    (root / ".complete").write_text(EXTERNAL_VERSION + "\n")
    return root


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` px (a decompression bomb's shape):
    what the loaders and the command line must refuse from the header alone."""
    import struct  # only this builder needs them
    import zlib  # only this builder needs them

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )
