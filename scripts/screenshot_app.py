"""Regenerate the README's screenshot of the web page: serve the app with Voila, upload a
*synthetic* scan (no BUSI pixels may be committed) in headless Chromium, save the page.

    python scripts/screenshot_app.py [--run runs/cpu] [--out figures/app.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from busi_utils.core import config, runfolder
from busi_utils.data.synthetic import synthetic_case
from busi_utils.serve import webapp


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(runfolder.default_run()))
    ap.add_argument("--out", default=str(config.repo_root() / "figures" / "app.png"))
    args = ap.parse_args()
    if why := webapp.browser_available():
        raise SystemExit(f"cannot take the screenshot: {why}")
    with tempfile.TemporaryDirectory() as tmp:
        scan = Path(tmp) / "synthetic_scan.png"
        image, _ = synthetic_case(np.random.default_rng(7), "malignant", 360, 480)
        Image.fromarray(image).save(scan)
        with (
            webapp.serve(args.run, Path(tmp) / "voila.log") as url,
            webapp.open_page(url, Path(tmp) / "chrome", 1100, 960) as page,
        ):
            shown = webapp.upload_and_read(page, scan)
            page.save_screenshot(args.out)
    print(f"{args.out}: the page after uploading a synthetic scan -> {shown['label']} {shown['probabilities']}")


if __name__ == "__main__":
    main()
