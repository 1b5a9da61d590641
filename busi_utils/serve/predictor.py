"""The :class:`Predictor`: a run folder's models, as one call that segments and classifies any image.

Two backends compute the same thing. With the run's ONNX export (notebook 04) present and made
from the run's current models, it runs on onnxruntime and NumPy only: this module imports
neither torch nor fastai. Without it (or with a stale one) it says so in one line and runs the
torch models. The pixels are those of training (:mod:`busi_utils.core.images`). The command line
over it is :mod:`busi_utils.serve.infer`. Research and teaching only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from busi_utils.adapt.site import read_site
from busi_utils.core.config import CLASSES
from busi_utils.core.errors import RunFolderError
from busi_utils.core.files import read_json
from busi_utils.core.images import lesion_confidence, prob_to_uint8, resize_pair, resize_prob, to_grayscale
from busi_utils.core.runfolder import RunPaths, export_status
from busi_utils.evaluation import uncertainty
from busi_utils.serve.backends import OnnxBackend, TorchBackend
from busi_utils.serve.prediction import BACKENDS, Prediction
from busi_utils.stage2 import fusion, shape

__all__ = ["BACKENDS", "Predictor"]


class Predictor:
    """Segment and classify any image with a run folder's models: the fold-U-Net ensemble, then the method classifier.

    ``backend``: ``"auto"`` (ONNX when a current export exists, else torch), ``"onnx"`` or
    ``"torch"``. ``notice`` receives the one-line reason when auto falls back to torch.
    ``site``: answer as a site adapted to another hospital (``python -m busi_utils.serve.adapt``;
    chapter 8): its graphs, decision, temperature and referral cutoff. Without it, the run's.
    """

    def __init__(
        self, run_dir: str | os.PathLike, backend: str = "auto", notice=None, threads: int = 0, site: str | None = None
    ):
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
        self.site = read_site(paths.root, site) if site else None
        recipe, why = export_status(paths) if backend != "torch" else (None, "torch backend requested")
        if self.site is not None and recipe is not None:
            recipe = read_json(self.site.exports / paths.export_recipe.name)  # read_site checked every file's hash
        if backend == "onnx" and recipe is None:
            raise RunFolderError(f"{paths.export_recipe}: cannot use the ONNX backend: {why}")
        if recipe is not None:
            self.backend = OnnxBackend(paths, recipe, threads, self.site.exports if self.site else None)
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
            self.backend = TorchBackend(paths, self.site)
            fin, self.fusion = summary["finalised"], summary["fusion"]
            if self.site is not None:
                fin = {**fin, **self.site.answer_params()}
                self.fusion = fin["fusion"]
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
        conf = float(lesion_confidence(prob))
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
