"""Inference for users: a :class:`Predictor` over a run folder's exported models, and a CLI.

    python -m busi_utils.infer --image scan.png [--run runs/cpu] [--out DIR] [--json]
    python -m busi_utils.infer --folder scans/ [--run runs/cpu] [--out DIR] [--json]

The preprocessing is the training code path (``data`` -> ``preprocess.resize_pair`` ->
``classification.build_inputs``), not a copy of it. Research and teaching only.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import DISCLAIMER
from .config import CLASSES, read_json, repo_root

MIN_SIDE = 64
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


class InputError(ValueError):
    """An input that cannot be analysed; the message names the file and the problem."""


class RunFolderError(FileNotFoundError):
    """The run folder is missing or lacks an exported model."""


def to_grayscale(image) -> np.ndarray:
    """A path, PIL image or array -> grayscale uint8 (H, W), the way training saw BUSI.

    Accepts RGB, RGBA, palette, 8- and 16-bit grayscale, JPEG. Rejects what cannot be analysed
    with :class:`InputError`.
    """
    name = str(image) if isinstance(image, (str, os.PathLike)) else "<image>"
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        raw = path.read_bytes()
        if not raw:
            raise InputError(f"{path}: empty file")
        try:
            image = Image.open(io.BytesIO(raw))
            image.load()
        except UnidentifiedImageError:
            raise InputError(f"{path}: not an image (unrecognised format)") from None
        except (OSError, SyntaxError, ValueError) as err:
            raise InputError(f"{path}: unreadable or truncated image ({err})") from None
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            image = Image.fromarray(_to_uint8(np.asarray(image, dtype=np.float32)))
        elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            image = Image.alpha_composite(background, rgba)
        gray = np.asarray(image.convert("L"))
    else:
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[2] in (3, 4):
            gray = np.asarray(Image.fromarray(arr[..., :3].astype(np.uint8)).convert("L"))
        elif arr.ndim == 2:
            gray = arr.astype(np.uint8) if arr.dtype == np.uint8 else _to_uint8(arr.astype(np.float32))
        else:
            raise InputError(f"{name}: array of shape {arr.shape} is not an image")
    if min(gray.shape) < MIN_SIDE:
        raise InputError(f"{name}: image too small to hold a lesion ({gray.shape[1]}x{gray.shape[0]} px; at least {MIN_SIDE} px per side)")
    return gray


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """High-bit-depth gray to 8 bits by the bit depth in use (8, 12 or 16 bits), not by
    stretching min-max: a scan's contrast stays what the machine recorded."""
    top = float(arr.max())
    full = 255.0 if top <= 255 else 4095.0 if top <= 4095 else 65535.0
    return np.clip(np.round(arr / full * 255), 0, 255).astype(np.uint8)


@dataclass
class Prediction:
    """What the pipeline says about one image (masks at the image's own size)."""

    mask_prob: np.ndarray
    probabilities: dict[str, float]
    label: str
    entropy: float
    uncertain: bool
    threshold: float = 0.5
    image: np.ndarray = field(repr=False, default=None)

    @property
    def mask(self) -> np.ndarray:
        return self.mask_prob >= self.threshold

    def overlay(self) -> np.ndarray:
        from .viz import overlay

        return (overlay(self.image, self.mask) * 255).astype(np.uint8)

    def to_json(self) -> dict:
        return {"label": self.label, "probabilities": self.probabilities, "entropy": round(self.entropy, 4), "uncertain": self.uncertain,
                "lesion_area_fraction": round(float(self.mask.mean()), 4), "threshold": self.threshold, "disclaimer": DISCLAIMER}


def entropy_cutoff(run: Path) -> float:
    """Refer-to-a-human cutoff: the 80th percentile of test-split TTA entropy (notebook 05),
    else half of the maximum entropy log(3)."""
    path = Path(run) / "preds" / "test_uncertainty.csv"
    if path.exists():
        import pandas as pd

        return float(pd.read_csv(path)["entropy"].quantile(0.8))
    return float(np.log(len(CLASSES)) / 2)


class Predictor:
    """Load the exported U-Net and method classifier of a run folder; predict any image."""

    def __init__(self, run_dir: str | os.PathLike):
        from . import classification as cls
        from . import segmentation as seg

        run = Path(run_dir)
        if not run.is_dir():
            raise RunFolderError(f"{run}: run folder not found (run `make course` first, or pass --run)")
        summary = read_json(run / "models" / "classifier_summary.json")
        needed = [run / "models" / "unet_final.pt", run / "models" / "classifier_summary.json"]
        if summary:
            needed.append(run / "models" / summary["method_model"])
        missing = [p for p in needed if not p.exists()]
        if missing:
            raise RunFolderError(f"{missing[0]}: missing; the run folder is incomplete (run notebooks 02-04)")
        self.run = run
        self.unet, self.unet_info = seg.load_segmenter(needed[0])
        self.classifier, self.cls_info = cls.load_classifier(needed[2])
        self.seg_size = self.unet_info["recipe"]["size"]
        self.cls_size = self.cls_info["recipe"]["size"]
        self.tta = int((read_json(run / "metrics.json") or {}).get("uncertainty", {}).get("tta_views", 2))
        self.entropy_cutoff = entropy_cutoff(run)

    def predict(self, image, threshold: float = 0.5) -> Prediction:
        from . import classification as cls
        from . import explain, oof, preprocess
        from . import segmentation as seg

        gray = to_grayscale(image)
        small, _ = preprocess.resize_pair(gray, None, self.seg_size)
        prob = seg.predict_masks(self.unet, self.unet_info, small[None])[0]
        prob = oof.prob_to_uint8(prob).astype(np.float32) / 255.0  # as stored for training
        store = _SingleImage(preprocess.resize_pair(gray, None, self.cls_size)[0])
        x = cls.build_inputs("image+pred_mask", ["x"], store, {"x": prob}, self.cls_size)
        probs, ent = explain.tta_predict(self.classifier, x, self.cls_info["stats"], n=self.tta)
        full = np.asarray(Image.fromarray(prob.astype(np.float32)).resize(gray.shape[::-1], Image.BILINEAR), dtype=np.float32)
        p = {c: float(probs[0, k]) for k, c in enumerate(CLASSES)}
        return Prediction(full, p, max(p, key=p.get), float(ent[0]), bool(ent[0] > self.entropy_cutoff), threshold, gray)


class _SingleImage:
    def __init__(self, img: np.ndarray):
        self.img = img

    def image(self, _):
        return self.img


def write_outputs(pred: Prediction, stem: str, out_dir: Path) -> list[Path]:
    """Mask and overlay PNGs, each written atomically (never half a file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, arr in (("mask", pred.mask.astype(np.uint8) * 255), ("overlay", pred.overlay())):
        path = out_dir / f"{stem}_{suffix}.png"
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, path)
        written.append(path)
    return written


def _default_run() -> Path:
    for profile in ("cpu", "gpu", "quick"):
        if (repo_root() / "runs" / profile / "models" / "unet_final.pt").exists():
            return repo_root() / "runs" / profile
    return repo_root() / "runs" / "cpu"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m busi_utils.infer", description="Segment and classify breast-ultrasound images with a trained run folder. " + DISCLAIMER)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", help="one image file (PNG, JPEG, BMP, TIFF; RGB, RGBA, palette, 8/16-bit gray; 64-5000 px)")
    src.add_argument("--folder", help="every image file in this folder (not recursive), with a progress bar")
    ap.add_argument("--run", help="run folder with exported models (default: runs/cpu, else runs/gpu, else runs/quick)")
    ap.add_argument("--out", default="predictions", help="where <name>_mask.png and <name>_overlay.png are written (default: ./predictions)")
    ap.add_argument("--threshold", type=float, default=0.5, help="lesion probability above which a pixel is lesion (default 0.5)")
    ap.add_argument("--json", action="store_true", help="print JSON (one object per image) instead of a table")
    args = ap.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated")  # torchvision import noise, not the user's concern
    try:
        predictor = Predictor(args.run or _default_run())
    except RunFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if args.image:
        files = [Path(args.image)]
    else:
        folder = Path(args.folder)
        if not folder.is_dir():
            print(f"error: {folder}: not a folder", file=sys.stderr)
            return 2
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    from tqdm.auto import tqdm

    results, failed = [], []
    for path in tqdm(files, desc="images", disable=not args.folder, file=sys.stderr):
        try:
            pred = predictor.predict(path, args.threshold)
        except InputError as err:
            failed.append(str(err))
            if args.image:
                print(f"error: {err}", file=sys.stderr)
                return 2
            continue
        write_outputs(pred, path.stem, Path(args.out))
        results.append({"image": str(path), **pred.to_json()})
    if args.json:
        print(json.dumps(results if args.folder else results[0], indent=1))
    else:
        print(f"{'image':40s} {'label':10s} " + " ".join(f"{c:>9s}" for c in CLASSES) + "  uncertain")
        for r in results:
            print(f"{Path(r['image']).name[:40]:40s} {r['label']:10s} " + " ".join(f"{r['probabilities'][c]:9.3f}" for c in CLASSES) + f"  {'yes' if r['uncertain'] else 'no'}")
        print(f"outputs in {Path(args.out).resolve()} | {DISCLAIMER}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} file(s) could not be analysed:", file=sys.stderr)
        for msg in failed:
            print(f"  {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
