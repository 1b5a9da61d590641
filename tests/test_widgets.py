"""The demo's HTML, built from hand-made Predictions and a fake predictor: no model, no browser."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from busi_utils import DISCLAIMER
from busi_utils.core.config import CLASSES
from busi_utils.serve import widgets
from busi_utils.serve.infer import Prediction

EVIDENCE = [
    {
        "name": "taller than wide",
        "value": 1.3,
        "text": "taller than wide: yes (1.3)",
        "meaning": "BI-RADS orientation: a",
    },
    {
        "name": "solidity",
        "value": 0.8,
        "text": "margin irregular: 0.80",
        "meaning": "lower means a more lobulated edge",
    },
]


def prediction(entropy: float, **kw) -> Prediction:
    """A 32 x 32 prediction with a square lesion, malignant at 0.63."""
    mask = np.zeros((32, 32), np.float32)
    mask[8:20, 10:22] = 0.9
    probs = dict(zip(CLASSES, (0.07, 0.30, 0.63)))
    image = np.full((32, 32), 120, np.uint8)
    return Prediction(mask, probs, "malignant", entropy, entropy > 0.5, image=image, **kw)


def fake_predictor(cutoff: float = 0.5, accuracy: float | None = 0.93, result: Prediction | None = None):
    """The attributes the widget code reads: ``entropy_cutoff``, ``cutoff_accuracy``, ``predict``."""
    return SimpleNamespace(entropy_cutoff=cutoff, cutoff_accuracy=accuracy, predict=lambda image, threshold: result)


def visible_text(markup: str) -> str:
    return re.sub(r"<[^>]+>", "", markup)


def test_disclaimer_shown_once():
    text = visible_text(widgets.disclaimer_html()).lower()
    assert text.count("research and teaching only") == 1
    rest = DISCLAIMER.split(". ", 1)[1].lower()
    assert text.count(rest) == 1
    assert "Research and teaching only" in widgets.disclaimer_html()  # what test_infer reads, case and all


def test_slider_label_fits():
    app = widgets.InferenceApp(fake_predictor())
    assert app.threshold.description == "Mask threshold"
    assert app.threshold.style.description_width == "initial"


@pytest.mark.parametrize("accuracy", [0.93, None])
def test_clear_answer_is_earned_and_explained(accuracy):
    markup = widgets.verdict_html(prediction(0.31), fake_predictor(0.5, accuracy))
    text = visible_text(markup)
    assert "clear answer" in text and "cutoff 0.500 nats" in text and "0.310" in text
    assert "confident" not in text.lower() and "uncertain" not in text
    assert ("right 93% of the time" in text) == (accuracy is not None)
    assert "0 = certain" in text and "1.10" in text


def test_uncertain_answer_is_referred():
    text = visible_text(widgets.verdict_html(prediction(0.82), fake_predictor(0.5)))
    assert "uncertain: refer to a human" in text and "0.820" in text and "cutoff 0.500 nats" in text
    assert "clear answer" not in text and "confident" not in text.lower()


def test_missing_cutoff_accuracy_attribute_is_fine():
    text = visible_text(widgets.verdict_html(prediction(0.31), SimpleNamespace(entropy_cutoff=0.5)))
    assert "clear answer" in text and "of the time" not in text


def test_evidence_listed_with_meanings():
    markup = widgets.verdict_html(prediction(0.31, evidence=EVIDENCE, lesion_confidence=0.97), fake_predictor())
    items = re.findall(r"<li class='busi-evidence'>(.*?)</li>", markup)
    assert len(items) == len(EVIDENCE)
    for item, e in zip(items, EVIDENCE):
        assert e["text"] in item and e["meaning"] in item
    assert "reading aids, not diagnostic criteria" in markup and "0.97" in markup


def test_no_evidence_no_lesion_view():
    p = prediction(0.31)
    markup = widgets.verdict_html(p, fake_predictor())
    assert "busi-evidence" not in markup and "Shape of the outlined lesion" not in markup
    assert "highest pixel probability" not in markup
    app = widgets.InferenceApp(fake_predictor(result=p))
    assert app.set_image(b"ignored") is p and p.label in app.verdict.value
    assert app.lesion_box.layout.display == "none"


def test_lesion_view_shown_when_present():
    view = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    app = widgets.InferenceApp(fake_predictor(result=prediction(0.31, lesion_view=view, evidence=EVIDENCE)))
    app.set_image(b"ignored")
    assert app.lesion_box.layout.display != "none" and bytes(app.lesion_view.value).startswith(b"\x89PNG")
    assert "what the lesion-view classifier read" in app.lesion_box.children[0].value
    assert "busi-evidence" in app.verdict.value
