"""Inference for users: a :class:`Predictor` over a trained run folder, and a CLI.

    python -m busi_utils.serve.infer --image scan.png [--run runs/cpu] [--out DIR] [--json]
    python -m busi_utils.serve.infer --folder scans/ [--run runs/cpu] [--out DIR] [--json]

Two backends compute the same thing. With the run's ONNX export (notebook 04) present and
made from the run's current models, the Predictor runs on onnxruntime and NumPy only: this
module imports neither torch nor fastai, so the command answers one image in a few seconds
(`benchmarks/infer.csv`).
Without it (or with a stale one) it says so in one line and runs the torch models.
The pixels are those of training (:mod:`busi_utils.core.images`). Research and teaching only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from busi_utils import DISCLAIMER
from busi_utils.core.config import CLASSES
from busi_utils.core.errors import InputError, RunFolderError
from busi_utils.core.files import atomic_path, read_json
from busi_utils.core.images import prob_to_uint8, resize_pair, resize_prob, to_grayscale
from busi_utils.core.runfolder import RunPaths, default_run, export_status  # noqa: F401  (export_status: public here too)
from busi_utils.evaluation import uncertainty
from busi_utils.serve.backends import OnnxBackend, TorchBackend
from busi_utils.serve.prediction import Prediction
from busi_utils.stage2 import fusion, shape

BACKENDS = ("auto", "onnx", "torch")

__all__ = ["Predictor", "Prediction", "InputError", "RunFolderError", "main"]


class Predictor:
    """Segment and classify any image with a run folder's models: the fold-U-Net ensemble, then the method classifier.

    ``backend``: ``"auto"`` (ONNX when a current export exists, else torch), ``"onnx"`` or
    ``"torch"``. ``notice`` receives the one-line reason when auto falls back to torch.
    """

    def __init__(self, run_dir: str | os.PathLike, backend: str = "auto", notice=None, threads: int = 0):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}: {', '.join(BACKENDS)}")
        paths = RunPaths(Path(run_dir).resolve())
        if not paths.root.is_dir():
            raise RunFolderError(f"{paths.root}: run folder not found (run `make course` first, or pass --run)")
        summary = read_json(paths.classifier_summary)
        if not paths.export_recipe.exists():  # without an export, the model files must be there
            for needed in (paths.fold_unet(0), paths.classifier_summary):
                if not needed.exists():
                    raise RunFolderError(f"{needed}: missing; the run folder is incomplete (run notebooks 02-04)")
        self.paths = paths
        recipe, why = export_status(paths) if backend != "torch" else (None, "torch backend requested")
        if backend == "onnx" and recipe is None:
            raise RunFolderError(f"{paths.export_recipe}: cannot use the ONNX backend: {why}")
        if recipe is not None:
            self.backend = OnnxBackend(paths, recipe, threads)
            fin, self.fusion = recipe, recipe["fusion"]
            self.seg_size = recipe["segmenter"]["size"]
            self.cls_size = recipe["views"][fusion.SCAN_VIEW]["size"]
            self.views = list(recipe["views"])
            ood_file = paths.exports / recipe["ood"]["file"]
        else:
            if backend == "auto" and notice is not None:
                notice(f"note: {why}; using the torch models (slower start)")
            if summary is None or "finalised" not in summary or "fusion" not in summary:
                raise RunFolderError(f"{paths.classifier_summary}: missing or incomplete; run notebook 04")
            self.backend = TorchBackend(paths)
            fin, self.fusion = summary["finalised"], summary["fusion"]
            self.seg_size, self.cls_size = self.backend.seg_graph.size, self.backend.graphs[fusion.SCAN_VIEW].size
            self.views = list(self.backend.graphs)
            ood_file = paths.ood_npz
        self.temperature = float(fin.get("temperature", 1.0))
        self.entropy_cutoff = float(fin.get("entropy_cutoff", np.log(len(CLASSES)) / 2))
        self.cutoff_accuracy = fin.get("cutoff_accuracy")
        self.ood = uncertainty.load_ood(ood_file)  # None for a run finalised without the check

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def predict(self, image, threshold: float = 0.5) -> Prediction:
        """Any image (path, bytes, PIL image or array): mask, fused and calibrated probabilities,
        entropy, referral flag, out-of-distribution flag, and the evidence (lesion view, the
        segmenter's confidence, shape descriptors)."""
        gray = to_grayscale(image)
        small = resize_pair(gray, None, self.seg_size)[0]
        prob = self.backend.segment((small.astype(np.float32) / 255.0)[None, None])[0, 0]
        prob = prob_to_uint8(prob).astype(np.float32) / 255.0  # as stored for training
        scan = resize_pair(gray, None, self.cls_size)[0] / np.float32(255.0)
        x = np.stack([scan, resize_prob(prob, self.cls_size)])[None].astype(np.float32)
        view_probs, feats = {}, None
        view_probs[fusion.SCAN_VIEW], feats = self.backend.classify(fusion.SCAN_VIEW, x)
        crop = None
        if fusion.CROP_VIEW in self.views:
            source = resize_pair(gray, None, 2 * self.cls_size)[0] / np.float32(255.0)
            crop = shape.lesion_crop(source, prob, self.cls_size)
            view_probs[fusion.CROP_VIEW] = self.backend.classify(fusion.CROP_VIEW, crop[None, None])[0]
        conf = float(prob.max())
        probs = fusion.decide(self.fusion, view_probs, np.array([conf]), self.temperature)[0]
        ent = float(uncertainty.entropy(probs[None])[0])
        views = {"features": feats, "scan": uncertainty.scan_statistics(x[:, 0])}
        score = float(uncertainty.ood_score(views, self.ood)[0]) if self.ood is not None else None
        full = np.asarray(Image.fromarray(prob).resize(gray.shape[::-1], Image.BILINEAR), dtype=np.float32)
        p = {c: float(probs[k]) for k, c in enumerate(CLASSES)}
        features = shape.shape_features(prob, aspect=gray.shape[0] / gray.shape[1])
        return Prediction(
            full,
            p,
            max(p, key=p.get),
            ent,
            ent > self.entropy_cutoff,
            threshold,
            gray,
            score,
            bool(score is not None and score > 1),
            crop,
            conf,
            shape.describe(features),
        )


def write_outputs(pred: Prediction, stem: str, out_dir: Path) -> list[Path]:
    """Mask and overlay PNGs, each written atomically (never half a file)."""
    written = []
    for suffix, arr in (("mask", pred.mask.astype(np.uint8) * 255), ("overlay", pred.overlay())):
        path = Path(out_dir) / f"{stem}_{suffix}.png"
        with atomic_path(path) as tmp:
            Image.fromarray(arr).save(tmp, format="PNG", compress_level=1)  # fast; the files are small anyway
        written.append(path)
    return written


def _flags(r: dict) -> str:
    flags = (["NOT LIKE THE TRAINING SCANS: unreliable"] if r["out_of_distribution"] else []) + (
        ["uncertain: refer"] if r["uncertain"] else []
    )
    return "; ".join(flags) or "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m busi_utils.serve.infer",
        description="Segment and classify breast-ultrasound images with a trained run folder. " + DISCLAIMER,
    )
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--image", help="one image file (PNG, JPEG, BMP, TIFF; RGB, RGBA, palette, 8/16-bit gray; 64-5000 px)"
    )
    src.add_argument("--folder", help="every image file in this folder (not recursive), with a progress bar")
    ap.add_argument("--run", help="run folder with trained models (default: runs/cpu, else runs/gpu, else runs/quick)")
    ap.add_argument(
        "--out",
        default="predictions",
        help="where <name>_mask.png and <name>_overlay.png are written (default: ./predictions)",
    )
    ap.add_argument(
        "--threshold", type=float, default=0.5, help="lesion probability above which a pixel is lesion (default 0.5)"
    )
    ap.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="onnx (fast start), torch, or auto: onnx when the run has a current export",
    )
    ap.add_argument("--json", action="store_true", help="print JSON (one object per image) instead of a table")
    args = ap.parse_args(argv)
    workers = 1 if args.image else min(4, os.cpu_count() or 1)
    try:
        predictor = Predictor(
            args.run or default_run(),
            args.backend,
            notice=lambda msg: print(msg, file=sys.stderr),
            threads=1 if workers > 1 else 0,
        )
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

    def analyse(path: Path) -> dict | str:
        try:
            pred = predictor.predict(path, args.threshold)
        except InputError as err:
            return str(err)
        write_outputs(pred, path.stem, Path(args.out))
        return {"image": str(path), **pred.to_json()}

    with ThreadPoolExecutor(workers) as pool:  # decoding, inference and PNG writing release the GIL
        outcomes = list(_progress(pool.map(analyse, files), bool(args.folder), len(files)))
    results = [o for o in outcomes if isinstance(o, dict)]
    failed = [o for o in outcomes if isinstance(o, str)]
    if args.image and failed:
        print(f"error: {failed[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results if args.folder else results[0], indent=1))
    else:
        print(f"{'image':40s} {'label':10s} " + " ".join(f"{c:>9s}" for c in CLASSES) + "  flags")
        for r in results:
            print(
                f"{Path(r['image']).name[:40]:40s} {r['label']:10s} "
                + " ".join(f"{r['probabilities'][c]:9.3f}" for c in CLASSES)
                + f"  {_flags(r)}"
            )
        print(f"outputs in {Path(args.out).resolve()} | {DISCLAIMER}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} file(s) could not be analysed:", file=sys.stderr)
        for msg in failed:
            print(f"  {msg}", file=sys.stderr)
        return 2
    return 0


def _progress(items, show: bool, total: int):
    if not show:
        return items
    from tqdm import tqdm  # light CLI path: loaded when used

    return tqdm(items, desc="images", total=total, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
