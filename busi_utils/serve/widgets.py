"""The interactive demo: an ipywidgets app over a :class:`busi_utils.serve.infer.Predictor`.

Everything a user sees is a widget whose value can be read, so the app is tested headlessly
(build it, feed it an image, read the outputs). The notebook only displays ``app.widget``.
"""

from __future__ import annotations

import html
import io
import os
import re
from collections.abc import Mapping
from pathlib import Path

import ipywidgets as W
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from busi_utils import DISCLAIMER
from busi_utils.core.config import CLASSES
from busi_utils.core.images import prob_to_uint8
from busi_utils.core.runfolder import RunPaths, default_run
from busi_utils.core.viz import PALETTE
from busi_utils.data import read_index
from busi_utils.serve.infer import InputError, Prediction, Predictor


def _png(arr: np.ndarray) -> bytes:
    """An 8-bit array (gray or RGB) as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def disclaimer_html(text: str = DISCLAIMER) -> str:
    """The banner: ``text`` once, its first sentence in bold ("For research and teaching only."
    is shown as "Research and teaching only.")."""
    head, _, rest = text.partition(". ")
    head = re.sub(r"^for\s+", "", head.rstrip("."), flags=re.IGNORECASE)
    head = head[:1].upper() + head[1:]
    return (
        "<div class='busi-disclaimer' style='background:#fff3cd;padding:6px;border:1px solid #e0c060'>"
        f"<b>{html.escape(head)}.</b> {html.escape(rest)}</div>"
    )


def referral_html(entropy: float, cutoff: float, accuracy: float | None = None) -> str:
    """Clear answer or refer to a human, with the numbers that decide it, and one sentence on entropy.
    ``accuracy``: held-out accuracy of the cases at or below the cutoff (left out when None)."""
    if entropy <= cutoff:
        held_out = (
            "" if accuracy is None else f"; on held-out scans, answers this clear were right {accuracy:.0%} of the time"
        )
        flag = f"<span class='busi-referral'>clear answer (entropy {entropy:.3f} ≤ cutoff {cutoff:.3f} nats{held_out})</span>"
    else:
        flag = (
            "<span class='busi-referral' style='color:#c00'><b>uncertain: refer to a human</b> "
            f"(entropy {entropy:.3f} &gt; cutoff {cutoff:.3f} nats)</span>"
        )
    explain = (
        "<div style='font-size:smaller;color:#666'>Entropy measures how spread out the three probabilities are: "
        f"0 = certain, ln 3 ≈ {np.log(len(CLASSES)):.2f} = all three classes equally likely.</div>"
    )
    return flag + explain


def evidence_html(evidence: list[dict] | None) -> str:
    """The shape descriptors of the outlined lesion, each text with its meaning in small grey
    type (items of class ``busi-evidence``); '' when there are none."""
    if not evidence:
        return ""
    items = "".join(
        f"<li class='busi-evidence'><span class='busi-evidence-text'>{html.escape(str(e['text']))}</span>"
        f"<div style='font-size:smaller;color:#666'>{html.escape(str(e.get('meaning', '')))}</div></li>"
        for e in evidence
    )
    return f"<b>Shape of the outlined lesion (reading aids, not diagnostic criteria)</b><ul>{items}</ul>"


def verdict_html(p: Prediction, predictor) -> str:
    """Label, probabilities (one element per class, read by the browser test), referral,
    out-of-distribution warning and the shape evidence, as HTML. ``predictor`` needs only
    ``entropy_cutoff`` (and optionally ``cutoff_accuracy``)."""
    ood = (
        "<div class='busi-ood' style='background:#fdd;border:2px solid #c00;padding:6px'><b>Not like the training scans.</b> "
        f"This input is farther from the breast-ultrasound scans the models learned from than 99% of validation "
        f"scans (score {p.ood_score:.2f} > 1). The outputs below are <b>unreliable</b>.</div>"
        if p.out_of_distribution
        else ""
    )
    rows = "".join(
        f"<tr><td>{c}</td><td class='busi-prob' data-class='{c}'>{p.probabilities[c]:.4f}</td></tr>" for c in CLASSES
    )
    referral = referral_html(p.entropy, predictor.entropy_cutoff, getattr(predictor, "cutoff_accuracy", None))
    found = (
        ""
        if p.lesion_confidence is None
        else f"<br>segmenter's highest pixel probability {p.lesion_confidence:.2f} (how sure it is that a lesion is there)"
    )
    return (
        f"{ood}<h3 class='busi-label'>{html.escape(p.label)}</h3><table>{rows}</table>{referral}"
        f"lesion area {p.mask.mean():.1%} at threshold {p.threshold:.2f}{found}<br>{evidence_html(p.evidence)}"
    )


def lesion_png(view: np.ndarray) -> bytes:
    """The lesion-view crop (float in [0, 1]) as an 8-bit grayscale PNG."""
    return _png(prob_to_uint8(np.asarray(view, dtype=np.float32)))


def _bar_chart(probs: Mapping[str, float]) -> bytes:
    with matplotlib.rc_context({"figure.max_open_warning": 0}):
        fig, ax = plt.subplots(figsize=(3.2, 2.2))
        ax.barh(list(CLASSES), [probs[c] for c in CLASSES], color=[PALETTE[c] for c in CLASSES])
        ax.set(xlim=(0, 1), xlabel="probability")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
    return buf.getvalue()


class InferenceApp:
    """Upload a scan or pick a test-split image; see mask, overlay, class probabilities and
    the uncertainty; move the threshold to see how the mask depends on it."""

    def __init__(self, predictor: Predictor, examples: Mapping[str, str] | None = None, view_px: int = 256):
        self.predictor = predictor
        self.prediction: Prediction | None = None
        self.view_px = view_px
        self.upload = W.FileUpload(accept="image/*", multiple=False, description="Upload scan")
        self.examples = W.Dropdown(
            options=[("(pick a test image)", "")] + [(k, v) for k, v in (examples or {}).items()],
            description="Test split",
        )
        self.threshold = W.FloatSlider(
            value=0.5,
            min=0.05,
            max=0.95,
            step=0.05,
            description="Mask threshold",
            continuous_update=False,
            style={"description_width": "initial"},
            layout=W.Layout(width="360px"),
        )
        self.image_view, self.mask_view, self.overlay_view = (W.Image(format="png", width=view_px) for _ in range(3))
        self.chart = W.Image(format="png")
        self.verdict = W.HTML()
        self.error = W.HTML()
        self.lesion_view = W.Image(format="png", width=128)
        self.lesion_box = W.VBox([W.HTML("<b>what the lesion-view classifier read</b>"), self.lesion_view])
        self.lesion_box.layout.display = "none"
        self.disclaimer = W.HTML(disclaimer_html())
        self.upload.observe(self._on_upload, names="value")
        self.examples.observe(self._on_example, names="value")
        self.threshold.observe(lambda _: self._render(), names="value")
        label = lambda t: W.HTML(f"<b>{t}</b>")  # noqa: E731
        self.widget = W.VBox(
            [
                self.disclaimer,
                W.HBox([self.upload, self.examples, self.threshold]),
                self.error,
                W.HBox(
                    [
                        W.VBox([label("image"), self.image_view]),
                        W.VBox([label("predicted mask"), self.mask_view]),
                        W.VBox([label("overlay"), self.overlay_view]),
                    ]
                ),
                W.HBox([self.chart, self.verdict, self.lesion_box]),
            ]
        )

    def set_image(self, image) -> Prediction | None:
        """Run the pipeline on a path, PIL image, array or bytes, and refresh every view.
        Bytes (an upload) are size-checked from their header before decoding."""
        try:
            self.prediction = self.predictor.predict(image, self.threshold.value)
            self.error.value = ""
        except (InputError, OSError) as err:
            self.prediction = None
            self.verdict.value = ""
            self.lesion_box.layout.display = "none"
            self.error.value = (
                f"<span class='busi-error' style='color:#c00'>Cannot analyse this image: {html.escape(str(err))}</span>"
            )
            return None
        self.image_view.value = _png(self.prediction.image)
        self.chart.value = _bar_chart(self.prediction.probabilities)
        self._show_lesion_view(self.prediction.lesion_view)
        self._render()
        return self.prediction

    def _render(self) -> None:
        p = self.prediction
        if p is None:
            return
        p.threshold = self.threshold.value
        self.mask_view.value = _png(p.mask.astype(np.uint8) * 255)
        self.overlay_view.value = _png(p.overlay())
        self.verdict.value = verdict_html(p, self.predictor)

    def _show_lesion_view(self, view: np.ndarray | None) -> None:
        """Show the lesion-view crop beside the verdict, or hide its box when there is none."""
        if view is not None:
            self.lesion_view.value = lesion_png(view)
        self.lesion_box.layout.display = "none" if view is None else None

    def _on_upload(self, change) -> None:
        files = change["new"]
        if files:
            item = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
            self.set_image(bytes(item["content"]))  # to_grayscale caps the bytes and reads the header first

    def _on_example(self, change) -> None:
        if change["new"]:
            self.set_image(change["new"])


def launch_app(run_dir: str | None = None, n_examples: int = 40, site: str | None = None) -> InferenceApp:
    """The app over a run folder (default: the one :func:`busi_utils.core.runfolder.default_run`
    picks, or ``$BUSI_RUN``), with the first test-split images to pick from. ``make app``
    serves it as a web page with Voila (``app/busi_app.ipynb``). ``site`` (or ``$BUSI_SITE``):
    answer as an adapted site of the run (chapter 8)."""
    paths = RunPaths(Path(run_dir or os.environ.get("BUSI_RUN") or default_run()))
    predictor = Predictor(paths.root, site=site or os.environ.get("BUSI_SITE") or None)
    examples = {}
    if paths.split_csv.exists() and paths.index_csv.exists():
        index = read_index(paths.index_csv).set_index("image_id")
        test_ids = paths.read_split().query("split == 'test'")["image_id"].head(n_examples)
        examples = {i: index.loc[i, "image_path"] for i in test_ids if Path(index.loc[i, "image_path"]).exists()}
    return InferenceApp(predictor, examples)
