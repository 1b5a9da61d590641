"""The old, flat module names (``busi_utils.segmentation``, ``python -m busi_utils.infer``)
keep working for one release: each is a small module that forwards to the module's new home
and warns once. New code imports from the folders (``busi_utils.stage1.segmentation``)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED = {  # old name -> new home
    "config": "core.config", "errors": "core.errors", "files": "core.files", "runfolder": "core.runfolder",
    "images": "core.images", "viz": "core.viz", "benchmark": "evaluation.benchmark",
    "synthetic": "data.synthetic", "dedup": "data.dedup", "splits": "data.splits",
    "preprocess": "data.preprocess", "external": "data.external",
    "pretrained": "stage1.pretrained", "training": "stage1.training", "augment": "stage1.augment",
    "segmentation": "stage1.segmentation", "oof": "stage1.oof",
    "classification": "stage2.classification", "shape": "stage2.shape", "crossfit": "stage2.crossfit",
    "fusion": "stage2.fusion",
    "metrics": "evaluation.metrics", "uncertainty": "evaluation.uncertainty", "explain": "evaluation.explain",
    "report": "evaluation.report", "evaluate": "evaluation.evaluate",
    "export": "serve.export", "infer": "serve.infer", "widgets": "serve.widgets", "webapp": "serve.webapp",
}  # fmt: skip


class _Forwarder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``busi_utils.<old name>`` and makes it a module whose attributes are the new
    module's; ``python -m`` runs the new module's code."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        if package == "busi_utils" and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    @staticmethod
    def _target(fullname: str) -> str:
        return "busi_utils." + MOVED[fullname.rpartition(".")[2]]

    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module) -> None:
        new = self._target(module.__name__)
        if module.__name__ == "__main__":  # pragma: no cover - runpy takes get_code instead
            return
        warnings.warn(f"{module.__name__} moved to {new}; the old name works for one release", DeprecationWarning, 2)
        real = importlib.import_module(new)
        module.__getattr__ = lambda attr: getattr(real, attr)
        module.__dir__ = lambda: dir(real)
        module.__doc__ = real.__doc__

    def get_code(self, fullname):
        """For ``python -m busi_utils.<old name>``: the new module's code, run as ``__main__``."""
        target = self._target(fullname)
        return importlib.util.find_spec(target).loader.get_code(target)


def install() -> None:
    if not any(isinstance(f, _Forwarder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Forwarder())  # before any other finder: an old name is never a file
