"""The README's results and figures come only from a real-data run of a full profile."""

from __future__ import annotations

import json
import subprocess
import sys

from busi_utils.core import config

SCRIPT = config.repo_root() / "scripts" / "results_table.py"


def fake_run(tmp_path, kind: str, profile: str):
    run = tmp_path / f"{kind}_{profile}"
    (run / "figures").mkdir(parents=True)
    (run / "figures" / "roc_curves.png").write_bytes(b"\x89PNG fake")
    (run / "metrics.json").write_text(json.dumps({"data": {"kind": kind}, "profile": profile}))
    return run


def readme(tmp_path):
    path = tmp_path / "repo" / "README.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    return path


def run_script(metrics, readme_path):
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(metrics), "--readme", str(readme_path)], capture_output=True, text=True
    )


def test_a_synthetic_or_quick_run_writes_neither_table_nor_figures(tmp_path):
    for kind, profile in (("synthetic", "cpu"), ("busi", "quick")):
        target = readme(tmp_path)
        r = run_script(fake_run(tmp_path, kind, profile) / "metrics.json", target)
        assert r.returncode == 0 and "not written" in r.stderr
        assert "old" in target.read_text() and not (target.parent / "figures").exists()


def test_publish_figures_copies_every_plot_whole(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from results_table import publish_figures

    run = fake_run(tmp_path, "busi", "cpu")
    dest = tmp_path / "repo" / "figures"
    assert publish_figures(run / "figures", dest) == ["roc_curves.png"]
    assert (dest / "roc_curves.png").read_bytes() == b"\x89PNG fake"
    assert not list(dest.glob(".*.tmp"))
