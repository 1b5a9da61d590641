"""The leak most BUSI papers have, measured (chapter 5): an ungrouped random split, on which copies
of test scans sit in training."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from busi_utils.core.files import cached_json
from busi_utils.data.preprocess import ArrayStore, resized_arrays
from busi_utils.data.splits import copies_across, random_split
from busi_utils.evaluation.metrics import classification_metrics
from busi_utils.stage2.classification import CHANNELS, build_inputs, predict_tta, train_classifier


def random_split_experiment(
    index: pd.DataFrame,
    groups: pd.DataFrame,
    recipe: dict,
    seed: int,
    test_frac: float = 0.2,
    epochs: int | None = None,
    show_progress: bool = False,
    cache: Path | None = None,
) -> dict:
    """The leak most BUSI papers have: an ungrouped random split (duplicates may cross it,
    cross-label copies kept). Trains the image-only recipe on it and reports its test
    metrics and how many test images have a copy in training. Compare with the grouped split.

    With ``cache`` (a JSON file in the run folder) a re-run reads the answer computed from the
    same images, labels, recipe, seed and split fraction instead of training again."""
    if cache is not None:
        key = {
            "images": hashlib.sha256(
                ",".join(index["image_id"] + ":" + index["label"].astype(str)).encode()
            ).hexdigest(),
            "groups": hashlib.sha256(groups.to_csv(index=False).encode()).hexdigest(),
            "recipe": recipe,
            "seed": seed,
            "test_frac": test_frac,
            "epochs": epochs,
        }
        make = lambda: random_split_experiment(index, groups, recipe, seed, test_frac, epochs, show_progress)  # noqa: E731
        return cached_json(cache, key, make)
    from sklearn.model_selection import (
        train_test_split,  # scikit-learn: loaded where used (slow import)
    )

    ids = index["image_id"].tolist()
    labels = index["label"].astype(str).tolist()
    tr, te = random_split(labels, test_frac, seed)
    tr_fit, tr_val = train_test_split(tr, test_size=0.2, stratify=[labels[i] for i in tr], random_state=seed)
    store = ArrayStore(resized_arrays(index, recipe["size"], progress=False))
    x = build_inputs("image_only", ids, store, None, recipe["size"])
    r = dict(recipe, epochs=epochs or recipe["epochs"])
    model, _, info = train_classifier(
        x[tr_fit],
        [labels[i] for i in tr_fit],
        x[tr_val],
        [labels[i] for i in tr_val],
        r,
        seed,
        show_progress=show_progress,
        kinds=CHANNELS["image_only"],
    )
    probs = predict_tta(model, x[te], info["stats"])  # with its mirror image, as every member predicts
    return {
        "test": classification_metrics([labels[i] for i in te], probs),
        "n_test": len(te),
        "test_with_copy_in_train": copies_across(groups, [ids[i] for i in tr], [ids[i] for i in te]),
    }
