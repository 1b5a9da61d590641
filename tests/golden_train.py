"""Train a tiny U-Net and a tiny classifier with the course's own training code and print a hash
of their weights (JSON). ``tests/test_golden.py`` runs it in a fresh process, so the pins of
reproducible mode (or a test's other settings) are in place before torch loads:

    python tests/golden_train.py [--out hashes.json]

The hash is compared with ``tests/golden_hashes.json``: equal on every machine of a recorded
processor (vendor, family, model) in reproducible mode, that is the claim; the output names this
machine's processor, to record a new one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("BUSI_CACHE", tempfile.mkdtemp(prefix="busi-golden-"))

from busi_utils.core import reproducible  # noqa: E402

reproducible.pin_environment()  # before torch loads (importing busi_utils did it already: said here for the reader)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from busi_utils.data import build_index, dedup, preprocess, splits  # noqa: E402
from busi_utils.data.synthetic import make_synthetic_busi  # noqa: E402
from busi_utils.stage1 import segmentation as seg  # noqa: E402
from busi_utils.stage2 import classification as cls  # noqa: E402


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every tensor of the state dict, in key order, as float32 bytes."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def train_both(root: Path) -> dict[str, str]:
    index = build_index(make_synthetic_busi(root / "synthetic", seed=1), progress=False)
    split = splits.make_split(
        dedup.group_duplicates(index, dedup.find_duplicate_pairs(index, progress=False)), n_folds=3, seed=0
    )
    store = preprocess.ArrayStore(preprocess.resized_arrays(index, 32, progress=False))
    train_ids, watched = seg.fold_ids(split, 0)
    recipe = {"arch": "light", "base": 4, "size": 32, "epochs": 2, "batch_size": 8, "lr": 3e-3, "loss": "dice_bce"}
    unet = seg.train_segmenter(store, train_ids, watched, recipe, 0, show_progress=False)[0]
    rng = np.random.default_rng(0)
    x = rng.random((48, 2, 32, 32), dtype=np.float32)
    y = np.array(["normal", "benign", "malignant"] * 16)
    sys.path.insert(0, str(Path(__file__).parent))
    from helpers import tiny_course_classifier_recipe

    model, _, _ = cls.train_classifier(x[:36], y[:36], x[36:], y[36:], tiny_course_classifier_recipe(), 0, False)
    return {"unet": weights_sha256(unet), "classifier": weights_sha256(model)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the JSON here too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hashes = train_both(Path(tmp))
    machine = reproducible.describe()
    result = {**hashes, "torch": machine["versions"]["torch"], "isa_in_use": machine["isa_in_use"],
              "threads": machine["threads"], "cpu": machine["cpu"], "processor": machine["processor"],
              "reproducible": machine["reproducible"]}  # fmt: skip
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
