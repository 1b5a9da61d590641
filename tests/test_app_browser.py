"""The demo as a web page: Voila serves it, headless Chromium uploads a scan and reads it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from busi_utils import config, webapp
from busi_utils.config import CLASSES

pytestmark = pytest.mark.skipif(bool(webapp.browser_available()), reason=webapp.browser_available() or "")


def test_upload_shows_label_probabilities_and_disclaimer(quick_paths, quick_test_image, tmp_path):
    scan = tmp_path / "scan.png"
    Image.open(quick_test_image).save(scan)
    out = Path(os.environ.get("BUSI_ARTEFACTS", config.repo_root() / "runs" / "artefacts"))
    out.mkdir(parents=True, exist_ok=True)
    with (
        webapp.serve(quick_paths.root, tmp_path / "voila.log") as url,
        webapp.open_page(url, tmp_path / "chrome") as page,
    ):
        shown = webapp.upload_and_read(page, scan)
        page.save_screenshot(str(out / "app_browser_test.png"))
    assert shown["error"] is None and shown["label"] in CLASSES and shown["disclaimer"]
    assert set(shown["probabilities"]) == set(CLASSES)
    assert sum(shown["probabilities"].values()) == pytest.approx(1.0, abs=2e-4)  # shown to 4 decimals
    assert shown["label"] == max(shown["probabilities"], key=shown["probabilities"].get)
    assert (out / "app_browser_test.png").stat().st_size > 10_000
