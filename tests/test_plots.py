"""The evaluation chapters' figures draw what they are given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from busi_utils.core.config import CLASSES  # noqa: E402
from busi_utils.evaluation import metrics, plots  # noqa: E402


def frame(seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(3), 30)
    labels = [CLASSES[i % 3] for i in range(30)]
    return pd.DataFrame(
        {"label": labels, "pred": np.array(CLASSES)[p.argmax(1)], **{f"p_{c}": p[:, k] for k, c in enumerate(CLASSES)}}
    )


def test_each_figure_has_its_panels_and_lines():
    frames = {"method": frame(0), "image_only": frame(1)}
    fig = plots.confusion_matrices(frames, ["method", "image_only"])
    assert len(fig.axes) == 2 and int(sum(t.get_text().isdigit() for t in fig.axes[0].texts)) == 9
    fig = plots.roc_curves(frames)
    assert len(fig.axes[0].lines) == len(CLASSES) + 1 and len(fig.axes[1].lines) == len(frames) + 1
    probs = frames["method"][[f"p_{c}" for c in CLASSES]].to_numpy()
    fig = plots.reliability(frames["method"]["label"], {"before": probs, "after": probs**0.5}, "t")
    assert len(fig.axes[0].lines) == 3
    curve = metrics.referral_curve(frames["method"]["label"], probs, -probs.max(1))
    assert len(plots.referral(curve, "t", marked=0.2).axes[0].lines) == 2
    assert len(plots.referral(curve, "t").axes[0].lines) == 1
    assert len(plots.ood_scores(np.linspace(0, 2, 50)).axes[0].patches) == 30
    record = pd.DataFrame({"seed": [1, 2, 1, 2], "variant": ["method", "method", "image_only", "image_only"]})
    record = record.assign(macro_f1=[0.8, 0.82, 0.7, 0.72], ext_macro_f1=[0.5, 0.52, 0.45, 0.47])
    fig = plots.seed_points(record, {"macro_f1": "BUSI test", "ext_macro_f1": "external"})
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 8  # 2 seeds x 2 variants x 2 sets
    plt.close("all")
