"""Regenerate the README's process pictures in figures/ (drawn by busi_utils.core.diagrams, the
functions the chapters call): the two-stage pipeline.

    python scripts/make_diagrams.py
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from busi_utils.core import config, diagrams  # noqa: E402


def main() -> None:
    out = config.repo_root() / "figures" / "pipeline.png"
    ax = diagrams.plot_pipeline()
    ax.figure.savefig(out, dpi=100, bbox_inches="tight")
    print("wrote", out)


if __name__ == "__main__":
    main()
