"""The demo as a web page: serve ``app/busi_app.ipynb`` with Voila and drive it in a browser.

``make app`` serves it for people; :func:`serve` and :func:`open_page` let the browser test
and ``scripts/screenshot_app.py`` do what a person does (upload a scan, read the label and the
probabilities, take a screenshot) in headless Chromium from the system packages (Debian
``chromium`` and ``chromium-driver``): nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from busi_utils.core.config import repo_root
from busi_utils.core.images import MAX_BYTES

APP_NOTEBOOK = repo_root() / "app" / "busi_app.ipynb"
MAX_MESSAGE_BYTES = MAX_BYTES + 2**20  # the server drops larger websocket messages (uploads) unread
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser_available() -> str:
    """'' when headless Chromium and its driver are installed, else what is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).exists() or shutil.which(Path(p).name))]
    return f"not installed: {', '.join(missing)} (Debian packages chromium, chromium-driver)" if missing else ""


def voila_command(port: int) -> list[str]:
    """The command ``make app`` runs: Voila on localhost only, uploads capped."""
    return [
        sys.executable, "-m", "voila", str(APP_NOTEBOOK), f"--port={port}", "--no-browser", "--Voila.ip=127.0.0.1",
        f"--Voila.tornado_settings={{'websocket_max_message_size': {MAX_MESSAGE_BYTES}}}",
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(run_dir: str | os.PathLike, log: Path, timeout: float = 120) -> Iterator[str]:
    """Start Voila on a free local port for ``run_dir``; yield the page's URL; stop it after."""
    port = free_port()
    env = {**os.environ, "BUSI_RUN": str(Path(run_dir).resolve())}
    with open(log, "w") as fh:
        proc = subprocess.Popen(voila_command(port), env=env, stdout=fh, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.time() + timeout
            while True:
                try:
                    urllib.request.urlopen(url, timeout=5)  # the page itself: answers once the server is up
                    break
                except urllib.error.HTTPError:
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"Voila did not start (see {log})") from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def open_page(url: str, profile_dir: Path, width: int = 1300, height: int = 1000):
    """Headless Chromium on ``url`` (selenium, the system's chromedriver); yields the driver."""
    from selenium import webdriver  # selenium: loaded where used (slow import)
    from selenium.webdriver.chrome.service import (
        Service,  # selenium: loaded where used (slow import)
    )

    os.environ.setdefault("SE_OFFLINE", "true")  # never let selenium fetch a driver
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile_dir}", f"--window-size={width},{height}"):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or CHROMEDRIVER), options=opts)
    try:
        driver.get(url)
        yield driver
    finally:
        driver.quit()


_EXPOSE_FILE_INPUT = """
const click = HTMLInputElement.prototype.click;
HTMLInputElement.prototype.click = function () {
  if (this.type !== 'file') { return click.call(this); }
  this.id = 'busi-upload-input';
  this.style.display = 'block';
  document.body.appendChild(this);
};
"""


def upload_and_read(driver, image: Path, timeout: float = 180) -> dict:
    """Upload ``image`` through the page's file input and wait for the verdict; return the
    label, the probabilities shown, the warnings, whether the disclaimer is on the page and the
    shape evidence listed (each line's text, without its meaning)."""
    from selenium.webdriver.common.by import By  # selenium: loaded where used (slow import)
    from selenium.webdriver.support import (
        expected_conditions as EC,  # selenium: loaded where used (slow import)
    )
    from selenium.webdriver.support.ui import (
        WebDriverWait,  # selenium: loaded where used (slow import)
    )

    wait = WebDriverWait(driver, timeout)
    button = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, ".widget-upload")))
    # ipywidgets keeps its <input type=file> out of the page and clicks it to open the file
    # dialog. Put it into the page instead, so the browser driver can set its file, as a
    # person would pick one in the dialog.
    driver.execute_script(_EXPOSE_FILE_INPUT)
    button.click()
    field = wait.until(EC.presence_of_element_located((By.ID, "busi-upload-input")))
    field.send_keys(str(Path(image).resolve()))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".busi-label, .busi-error"))
    time.sleep(1.0)  # let the images of the same update render
    errors = driver.find_elements(By.CSS_SELECTOR, ".busi-error")
    probs = {e.get_attribute("data-class"): float(e.text) for e in driver.find_elements(By.CSS_SELECTOR, ".busi-prob")}
    labels = driver.find_elements(By.CSS_SELECTOR, ".busi-label")
    evidence = [e.text for e in driver.find_elements(By.CSS_SELECTOR, ".busi-evidence .busi-evidence-text")]
    return {
        "label": labels[0].text if labels else None,
        "probabilities": probs,
        "error": errors[0].text if errors else None,
        "out_of_distribution": bool(driver.find_elements(By.CSS_SELECTOR, ".busi-ood")),
        "disclaimer": "research and teaching only" in driver.page_source.lower(),
        "evidence": evidence,
    }


def main(argv: list[str] | None = None) -> int:
    """``make app``: serve the demo on localhost until Ctrl-C."""
    ap = argparse.ArgumentParser(
        prog="python -m busi_utils.serve.webapp", description="Serve the BUSI demo page with Voila."
    )
    ap.add_argument("--port", type=int, default=8866)
    ap.add_argument("--run", help="run folder (default $BUSI_RUN, else runs/cpu, runs/gpu, runs/quick)")
    ap.add_argument("--site", help="answer as an adapted site of the run (default $BUSI_SITE; serve.adapt makes one)")
    args = ap.parse_args(argv)
    env = {**os.environ, **({"BUSI_RUN": str(Path(args.run).resolve())} if args.run else {})}
    if args.site:
        env["BUSI_SITE"] = args.site
    print(f"serving on http://127.0.0.1:{args.port}/ (Ctrl-C stops) | research and teaching only", flush=True)
    return subprocess.call(voila_command(args.port), env=env)


if __name__ == "__main__":
    sys.exit(main())
