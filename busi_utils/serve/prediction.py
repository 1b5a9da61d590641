"""What the pipeline says about one image: the :class:`Prediction` every front end (the CLI, the
widgets app, the web page) reads, and its JSON form. NumPy only."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from busi_utils import DISCLAIMER
from busi_utils.core.images import overlay_uint8

BACKENDS = ("auto", "onnx", "torch")  # the Predictor's engines: ONNX when a current export exists, else torch


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
    ood_score: float | None = None  # distance to the training scans over its threshold; above 1: unfamiliar
    out_of_distribution: bool = False
    lesion_view: np.ndarray | None = field(repr=False, default=None)  # the crop the lesion-view classifier read, [0, 1]
    lesion_confidence: float | None = None  # the segmenter's highest pixel probability: "a lesion was found"
    evidence: list[dict] | None = None  # shape.describe(): name, value, text, meaning per shape descriptor

    @property
    def mask(self) -> np.ndarray:
        return self.mask_prob >= self.threshold

    @property
    def reliable(self) -> bool:
        """False when the input does not look like the scans the models learned from."""
        return not self.out_of_distribution

    def overlay(self) -> np.ndarray:
        """The scan as 8-bit RGB with the mask tinted red."""
        return overlay_uint8(self.image, self.mask)

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "probabilities": self.probabilities,
            "entropy": round(self.entropy, 4),
            "uncertain": self.uncertain,
            "out_of_distribution": self.out_of_distribution,
            "reliable": self.reliable,
            "ood_score": None if self.ood_score is None else round(self.ood_score, 3),
            "lesion_area_fraction": round(float(self.mask.mean()), 4),
            "lesion_confidence": None if self.lesion_confidence is None else round(self.lesion_confidence, 4),
            "shape_evidence": [e["text"] for e in self.evidence or []],
            "threshold": self.threshold,
            "disclaimer": DISCLAIMER,
        }
