"""The demo as a web page: Voila serves it, headless Chromium uploads scans and reads them.

Where Chromium is missing the tests skip, saying why; under CI (``CI=true``) they fail instead,
since ``.ci/run`` installs it and a skip there would hide a broken install."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from helpers import png_header_only
from PIL import Image

from busi_utils.core import config
from busi_utils.core.config import CLASSES
from busi_utils.serve import webapp
from busi_utils.serve.infer import Predictor


@pytest.fixture(autouse=True)
def browser():
    missing = webapp.browser_available()
    if missing and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the browser test, but Chromium is {missing}")
    if missing:
        pytest.skip(missing)


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
    expected = Predictor(quick_paths.root).predict(scan).evidence
    assert shown["evidence"] == [e["text"] for e in expected]  # the shape evidence, beside the diagnosis
    assert (out / "app_browser_test.png").stat().st_size > 10_000


def test_bad_uploads_get_a_message_and_noise_gets_the_banner(quick_paths, tmp_path):
    """A text file renamed .png and a PNG whose header claims 20000 x 20000 px are refused with
    the Predictor's own message; a noise image is answered, with the out-of-distribution banner
    exactly when the Predictor flags it (it does on the real BUSI)."""
    (tmp_path / "notes.png").write_text("this is text, not a scan")
    png_header_only(tmp_path / "bomb.png", 20000, 20000)
    noise = np.random.default_rng(1).integers(0, 256, (256, 256), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "noise.png")
    flagged = Predictor(quick_paths.root).predict(noise).out_of_distribution
    shown = {}
    with webapp.serve(quick_paths.root, tmp_path / "voila.log") as url:
        for name in ("notes.png", "bomb.png", "noise.png"):
            with webapp.open_page(url, tmp_path / f"chrome-{name}") as page:
                shown[name] = webapp.upload_and_read(page, tmp_path / name)
    assert "not an image" in shown["notes.png"]["error"] and shown["notes.png"]["label"] is None
    assert "too large" in shown["bomb.png"]["error"] and shown["bomb.png"]["label"] is None
    assert shown["noise.png"]["error"] is None and shown["noise.png"]["label"] in CLASSES
    assert shown["noise.png"]["out_of_distribution"] == flagged


def test_the_book_opens_in_a_browser_with_its_figures(complete_quick_paths, tmp_path):
    """``make book``'s contents page in headless Chromium, from disk: a click on a chapter opens
    its page, whose figures have loaded."""
    from selenium.webdriver.common.by import By

    from busi_utils import book

    index = book.build_book(complete_quick_paths.root, tmp_path / "book")
    with webapp.open_page(index.as_uri(), tmp_path / "chrome") as page:
        assert "busi-course" in page.title
        page.find_element(By.CSS_SELECTOR, 'main a[href="02_segmentation.html"]').click()
        assert page.current_url.endswith("02_segmentation.html")
        assert page.find_element(By.TAG_NAME, "h1").text.strip()
        loaded = page.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0);")
    assert loaded and all(loaded)
