"""The run folder, ``runs/<profile>/``: every file a run writes, where it lives and its shape.

This module is the only place that knows a run folder's file names. Notebooks, the
:class:`~busi_utils.serve.infer.Predictor`, the command-line tools and the tests ask
:class:`RunPaths` for a path, and the JSON files are checked against the schemas below
before they are written, so a reader finds the whole contract here::

    runs/<profile>/
      data/      index.csv, source.json, duplicate_groups.csv, split_manifest.csv  (01)
      masks/     unet_fold0.pt (+ .history.csv, .time.json), stage1_summary.json    (02)
      masks/     unet_fold<k>.pt, <split>/<image_id>.png, manifest.csv, summary.json (03)
      models/    classifier_<view>_fold<k>.pt: the cross-fitted members of each view and of
                 image-only (04), the ground-truth-mask ceiling's fold 0 (05); classifier_summary.json (04)
      preds/     <view>_fold<k>_{oof,test}.csv: each member's out-of-fold and test probabilities (04, 05)
      exports/   unet.onnx, <view>.onnx, ood.npz, recipe.json                        (04)
      figures/   plots of notebook 05 (scripts/results_table.py copies a real cpu run's to the README's figures/)
      preds/     random_split.json: 05's leaky-split experiment, kept for a re-run   (05)
      metrics.json (05; 07 adds its "external" block), timing.json (the runner)
      external/<set>_images.csv (07: one row per scan of an external set)
      external/<set>_patient_split.csv (+ .json: its parameters and hash; 07: development / evaluation patients)
      notebooks/ the executed notebooks (papermill)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from busi_utils.core.config import repo_root
from busi_utils.core.errors import RunFolderError, SchemaError
from busi_utils.core.files import file_sha256, read_json


@dataclass(frozen=True)
class RunPaths:
    """Paths of one run folder. ``RunPaths.for_profile`` creates the folders."""

    root: Path

    @classmethod
    def for_profile(cls, profile: str, run_dir: str | os.PathLike | None = None) -> RunPaths:
        root = Path(run_dir) if run_dir else repo_root() / "runs" / profile
        paths = cls(root.resolve())
        for sub in (paths.data, paths.models, paths.masks, paths.preds, paths.notebooks):
            sub.mkdir(parents=True, exist_ok=True)
        return paths

    # folders
    data = property(lambda self: self.root / "data")
    models = property(lambda self: self.root / "models")
    masks = property(lambda self: self.root / "masks")
    preds = property(lambda self: self.root / "preds")
    exports = property(lambda self: self.root / "exports")
    figures = property(lambda self: self.root / "figures")
    notebooks = property(lambda self: self.root / "notebooks")
    cli_demo = property(lambda self: self.root / "cli_demo")
    artefacts = property(lambda self: self.root / "artefacts")  # screenshots and other build artefacts
    external = property(lambda self: self.root / "external")  # per-image tables of external sets (07)
    # 01: the data audit
    index_csv = property(lambda self: self.data / "index.csv")
    source_json = property(lambda self: self.data / "source.json")
    groups_csv = property(lambda self: self.data / "duplicate_groups.csv")
    split_csv = property(lambda self: self.data / "split_manifest.csv")
    # 02: stage 1 (its models are the fold U-Nets: fold_unet below)
    stage1_summary = property(lambda self: self.masks / "stage1_summary.json")
    # 03: leakage-safe masks
    mask_manifest = property(lambda self: self.masks / "manifest.csv")
    mask_summary = property(lambda self: self.masks / "summary.json")
    # 04: stage 2 and the export
    classifier_summary = property(lambda self: self.models / "classifier_summary.json")
    unet_onnx = property(lambda self: self.exports / "unet.onnx")

    def view_onnx(self, view: str) -> Path:
        """The exported ensemble of one stage-2 view (``image+pred_mask`` -> ``image_plus_pred_mask.onnx``)."""
        return self.exports / f"{view.replace('+', '_plus_')}.onnx"

    ood_npz = property(lambda self: self.exports / "ood.npz")
    export_recipe = property(lambda self: self.exports / "recipe.json")
    # 05, 07 and the runner
    metrics_json = property(lambda self: self.root / "metrics.json")
    random_split_json = property(lambda self: self.preds / "random_split.json")  # 05's leaky-split experiment
    timing_json = property(lambda self: self.root / "timing.json")

    def external_images(self, key: str) -> Path:
        """The per-image table of external set ``key`` (``bus_uclm``, ``synthetic``; notebook 07)."""
        return self.external / f"{key}_images.csv"

    def external_split(self, key: str) -> Path:
        """External set ``key``'s patient split (development / evaluation; notebook 07 writes it
        once, with its hash in the ``.json`` beside it)."""
        return self.external / f"{key}_patient_split.csv"

    sites = property(lambda self: self.root / "sites")  # 08: one folder per site (adapt.site names its files)
    site = lambda self, name: self.sites / name  # noqa: E731 (a path, like the properties above)
    fold_unet_files = lambda self: sorted(self.masks.glob("unet_fold*.pt"))  # noqa: E731 (every fold's, for a site)

    def fold_unet(self, fold: int) -> Path:
        """The U-Net trained without fold ``fold``: it predicts that fold's masks and is one
        member of the ensemble that predicts the test split (and every new scan)."""
        return self.masks / f"unet_fold{fold}.pt"

    def segmenter(self, name: str) -> Path:
        """A U-Net by the name the mask manifest records (``unet_fold<k>.pt``)."""
        return self.masks / name

    def mask_png(self, split: str, image_id: str) -> Path:
        """Relative path (inside ``masks/``) of a stored predicted mask."""
        return Path(split) / f"{image_id}.png"

    def classifier(self, stem: str) -> Path:
        return self.models / f"classifier_{stem}.pt"

    def probabilities(self, stem: str, part: str) -> Path:
        return self.preds / f"{stem}_{part}.csv"

    @staticmethod
    def history(model: Path) -> Path:
        """The per-epoch history saved beside a model file."""
        return Path(model).with_suffix(".history.csv")

    def read_split(self):
        """The split manifest (image_id, label, group, split, fold) written by notebook 01."""
        return _read_csv(self.split_csv, "notebook 01")

    def read_groups(self):
        return _read_csv(self.groups_csv, "notebook 01")


def _read_csv(path: Path, writer: str):
    import pandas as pd  # light CLI path: loaded when used

    if not path.exists():
        raise RunFolderError(f"{path}: missing; run {writer} first")
    return pd.read_csv(path, keep_default_na=False)


def default_run() -> Path:
    """The run folder a user most likely means: runs/cpu, else runs/gpu, else runs/quick."""
    for profile in ("cpu", "gpu", "quick"):
        if RunPaths(repo_root() / "runs" / profile).classifier_summary.exists():
            return repo_root() / "runs" / profile
    return repo_root() / "runs" / "cpu"


# --------------------------------------------------------------------------- schemas

_NUM = {"type": ["number", "null"]}  # null: undefined (e.g. an AUC with a class absent); JSON has no NaN
_CI = {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2}
_SCORES = {
    "type": "object",
    "required": ["accuracy", "macro_f1", "malignant_recall", "auc_ovr"],
    "properties": {"accuracy": _NUM, "macro_f1": _NUM, "malignant_recall": _NUM, "auc_ovr": _NUM},
}


def _obj(required: dict[str, Any], **extra) -> dict:
    return {"type": "object", "required": list(required), "properties": required, **extra}


METRICS_SCHEMA = _obj(
    {
        "profile": {"type": "string"},
        "seed": {"type": "integer"},
        "data": _obj({"dataset_hash": {"type": "string"}, "n_images": {"type": "integer"}}),
        "split": _obj({"test": {"type": "integer"}, "train_pool": {"type": "integer"}}),
        "segmentation": _obj(
            {"dice_mean": _NUM, "dice_ci95": _CI, "iou_mean": _NUM, "n_lesion_images": {"type": "integer"}}
        ),
        "classification": _obj(
            {
                v: {**_SCORES, "required": _SCORES["required"] + ["macro_f1_ci95"]}
                for v in ("method", "image+pred_mask", "lesion_crop", "image_only", "shape_alone", "image+gt_mask")
            }
        ),
        "mask_worth": _obj(
            {
                "paired": {"type": "object"},
                "per_seed": {"type": "array"},
                "seeds": {"type": "object"},
                "verdict": {"type": "string"},
            }
        ),
        "calibration": _obj({"temperature": _NUM, "ece_before": _NUM, "ece_after": _NUM}),
        "uncertainty": _obj(
            {
                "tta_views": {"type": "integer"},
                "entropy_cutoff": _NUM,
                "referred_fraction": _NUM,
                "accuracy_kept": _NUM,
                "accuracy_tta": _NUM,
            }
        ),
        "ood": _obj({"quantile": _NUM, "flagged_test_fraction": _NUM}),
        "leakage": _obj(
            {
                "random_split": {"type": "object"},
                "grouped_split": {"type": "object"},
                "gt_mask_model": {"type": "object"},
            }
        ),
        "timing": _obj({"notebooks": {"type": "object"}, "course_seconds": _NUM}),
    },
    additionalProperties=True,
)

_MEMBERS = {
    "type": "array",
    "minItems": 1,
    "items": _obj({"source": {"type": "string"}, "fingerprint": {"type": "string"}}),
}

CLASSIFIER_SUMMARY_SCHEMA = _obj(
    {
        "balance": {"type": "string", "enum": ["weighted_loss", "sampler"]},
        "recipe": {"type": "object"},
        "views": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "members": {"type": "array", "minItems": 1, "items": {"type": "integer"}},
        "fusion": _obj({"kind": {"type": "string"}}),
        "fusion_comparison": {"type": "array"},
        "validation": {"type": "array"},
    }
)

EXPORT_RECIPE_SCHEMA = _obj(
    {
        "classes": {"type": "array", "items": {"type": "string"}},
        "segmenter": _obj(
            {
                "file": {"type": "string"},
                "size": {"type": "integer"},
                "flip_tta": {"type": "boolean"},
                "threshold": _NUM,
                "members": _MEMBERS,
            }
        ),
        "views": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": _obj(
                {
                    "file": {"type": "string"},
                    "size": {"type": "integer"},
                    "channels": {"type": "integer"},
                    "members": _MEMBERS,
                }
            ),
        },
        "tta_views": {"type": "integer"},
        "fusion": _obj({"kind": {"type": "string"}}),
        "temperature": _NUM,
        "entropy_cutoff": _NUM,
        "cutoff_accuracy": _NUM,
        "ood": _obj({"file": {"type": "string"}, "views": {"type": "array"}, "quantile": _NUM}),
    }
)


def validate(obj: Any, schema: dict, name: str) -> Any:
    """Return ``obj`` if it matches ``schema``, else raise :class:`SchemaError` naming the file
    and the first problem (``jsonschema``'s message and the path to the offending key)."""
    import jsonschema  # light CLI path: loaded when used

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(obj))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise SchemaError(f"{name}: {where}: {error.message}")
    return obj


def export_status(paths: RunPaths) -> tuple[dict | None, str]:
    """``(recipe, "")`` when the run's ONNX export is complete and made from its current model
    files, else ``(None, why not)``. Here, not in :mod:`busi_utils.serve.export`, because the light
    Predictor asks it without importing torch; :mod:`busi_utils.serve.infer` re-exports it."""
    recipe = read_json(paths.export_recipe)
    if recipe is None:
        return None, f"no ONNX export in {paths.exports} (notebook 04 writes it)"
    if "views" not in recipe:
        return None, "the ONNX export predates the two-view classifier ensembles (re-run notebook 04)"
    summary = read_json(paths.classifier_summary) or {}
    if summary.get("fusion") != recipe.get("fusion"):
        return None, "the ONNX export is stale: the fusion changed after it was exported (re-run notebook 04)"
    sources = [(paths.segmenter(m["source"]), m["fingerprint"]) for m in recipe["segmenter"]["members"]]
    sources += [(paths.models / m["source"], m["fingerprint"]) for v in recipe["views"].values() for m in v["members"]]
    files = [recipe["segmenter"]["file"], *[v["file"] for v in recipe["views"].values()]]
    for file in files:
        if not (paths.exports / file).exists():
            return None, f"{paths.exports / file} is missing"
    for model_file, fingerprint in sources:
        if model_file.exists() and file_sha256(model_file) != fingerprint:
            return (
                None,
                f"the ONNX export is stale: {model_file.name} changed after it was exported (re-run notebook 04)",
            )
    return recipe, ""
