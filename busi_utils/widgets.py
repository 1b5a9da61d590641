"""The interactive demo: an ipywidgets app over a :class:`busi_utils.infer.Predictor`.

Everything a user sees is a widget whose value can be read, so the app is tested headlessly
(build it, feed it an image, read the outputs). The notebook only displays ``app.widget``.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from pathlib import Path

import ipywidgets as W
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from . import DISCLAIMER
from .config import CLASSES
from .infer import InputError, Prediction, Predictor
from .viz import PALETTE


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _verdict_html(p: Prediction, predictor: Predictor) -> str:
    """Label, probabilities (one element per class, read by the browser test), referral and
    out-of-distribution warnings, as HTML."""
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
    flag = (
        "<span style='color:#c00'><b>uncertain</b>: entropy above the referral cutoff; a human should look</span>"
        if p.uncertain
        else "confident (entropy below the referral cutoff)"
    )
    return (
        f"{ood}<h3 class='busi-label'>{p.label}</h3><table>{rows}</table>entropy {p.entropy:.3f} "
        f"(cutoff {predictor.entropy_cutoff:.3f}): {flag}<br>lesion area {p.mask.mean():.1%} at threshold {p.threshold:.2f}"
    )


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
            value=0.5, min=0.05, max=0.95, step=0.05, description="Mask threshold", continuous_update=False
        )
        self.image_view, self.mask_view, self.overlay_view = (W.Image(format="png", width=view_px) for _ in range(3))
        self.chart = W.Image(format="png")
        self.verdict = W.HTML()
        self.error = W.HTML()
        self.disclaimer = W.HTML(
            f"<div style='background:#fff3cd;padding:6px;border:1px solid #e0c060'><b>Research and teaching only.</b> {DISCLAIMER}</div>"
        )
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
                W.HBox([self.chart, self.verdict]),
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
            self.error.value = (
                f"<span class='busi-error' style='color:#c00'>Cannot analyse this image: {html.escape(str(err))}</span>"
            )
            return None
        self.image_view.value = _png(self.prediction.image)
        self.chart.value = _bar_chart(self.prediction.probabilities)
        self._render()
        return self.prediction

    def _render(self) -> None:
        p = self.prediction
        if p is None:
            return
        p.threshold = self.threshold.value
        self.mask_view.value = _png(p.mask.astype(np.uint8) * 255)
        self.overlay_view.value = _png(p.overlay())
        self.verdict.value = _verdict_html(p, self.predictor)

    def _on_upload(self, change) -> None:
        files = change["new"]
        if files:
            item = files[0] if isinstance(files, (list, tuple)) else next(iter(files.values()))
            self.set_image(bytes(item["content"]))  # to_grayscale caps the bytes and reads the header first

    def _on_example(self, change) -> None:
        if change["new"]:
            self.set_image(change["new"])


def launch_app(run_dir: str | None = None, n_examples: int = 40) -> InferenceApp:
    """The app over a run folder (default: the one :func:`busi_utils.runfolder.default_run`
    picks, or ``$BUSI_RUN``), with the first test-split images to pick from. ``make app``
    serves it as a web page with Voila (``app/busi_app.ipynb``)."""
    import os

    from .data import read_index
    from .runfolder import RunPaths, default_run

    paths = RunPaths(Path(run_dir or os.environ.get("BUSI_RUN") or default_run()))
    predictor = Predictor(paths.root)
    examples = {}
    if paths.split_csv.exists() and paths.index_csv.exists():
        index = read_index(paths.index_csv).set_index("image_id")
        test_ids = paths.read_split().query("split == 'test'")["image_id"].head(n_examples)
        examples = {i: index.loc[i, "image_path"] for i in test_ids if Path(index.loc[i, "image_path"]).exists()}
    return InferenceApp(predictor, examples)
