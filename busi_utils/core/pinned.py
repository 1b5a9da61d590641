"""Run a command in reproducible mode: ``python -m busi_utils.core.pinned COMMAND [ARGS...]``.

The pins of :mod:`busi_utils.core.reproducible` are set in this process's environment, then
COMMAND replaces it, so every process it starts inherits them: ``make lab`` starts JupyterLab
this way, and each notebook's kernel gets the pins before it imports torch.
"""

from __future__ import annotations

import os
import sys

from busi_utils.core import reproducible


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m busi_utils.core.pinned COMMAND [ARGS...]", file=sys.stderr)
        return 2
    pinned = reproducible.pin_environment()
    mode = "on (" + ", ".join(f"{k}={v}" for k, v in pinned.items()) + ")" if pinned else "off"
    print(f"reproducible mode: {mode}", file=sys.stderr)
    os.execvp(argv[0], argv)
    return 0  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main())
