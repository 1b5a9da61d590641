"""The two engines behind the :class:`~busi_utils.serve.infer.Predictor`, which compute the same
graphs: onnxruntime on the run's export (no torch import: the light path), or torch on the
run's model files (:mod:`busi_utils.serve.export`), imported only when it is used."""

from __future__ import annotations

import numpy as np

from busi_utils.core.runfolder import RunPaths


class OnnxBackend:
    """The exported graphs on onnxruntime: the run's (``exports/``), or a site's (``folder``)."""

    name = "onnx"

    def __init__(self, paths: RunPaths, recipe: dict, threads: int = 0, folder=None):
        import onnxruntime as ort  # light CLI path: loaded when used

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads  # 0: all cores; 1 when images run in parallel threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting between images

        def session(file: str):
            return ort.InferenceSession(str((folder or paths.exports) / file), opts, providers=["CPUExecutionProvider"])

        self.seg = session(recipe["segmenter"]["file"])
        self.views = {view: session(v["file"]) for view, v in recipe["views"].items()}

    def segment(self, x: np.ndarray) -> np.ndarray:
        return self.seg.run(None, {"input": x})[0]

    def classify(self, view: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, feats = self.views[view].run(None, {"input": x})
        return probs, feats


class TorchBackend:
    """The same graphs (:mod:`busi_utils.serve.export`) run by torch on the run's model files."""

    name = "torch"

    def __init__(self, paths: RunPaths, site=None):

        import torch  # light CLI path: loaded when used

        from busi_utils.serve.export import load_graphs  # light CLI path: loaded when used

        self.torch = torch
        self.seg_graph, self.graphs, self.summary = load_graphs(paths)
        if site is not None:  # a fitted site (busi_utils.adapt.site): its statistics and weights put in
            from busi_utils.adapt.site import apply_state  # light CLI path: loaded when used

            self.seg_graph, self.graphs = apply_state(self.seg_graph, self.graphs, site.load_state())

    def segment(self, x: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.seg_graph(self.torch.from_numpy(x)).numpy()

    def classify(self, view: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.no_grad():
            probs, feats = self.graphs[view](self.torch.from_numpy(x))
        return probs.numpy(), feats.numpy()
