"""The site folder: what ``python -m busi_utils.serve.adapt`` fitted for one new hospital.

``runs/<profile>/sites/<name>/`` holds, written at once (a temporary folder renamed into
place, so a crash leaves either the whole site or none):

* ``manifest.json``: what it was fitted on (the run's fingerprint, the scans' names and
  hashes, the patients, the method) and the site's decision, temperature and referral cutoff;
* ``state.pt``: the adapted batch-norm statistics and any fine-tuned weights;
* ``exports/``: the adapted graphs in ONNX, with their ``recipe.json``, for the light Predictor.

Reading a site (:func:`read_site`) needs neither torch nor the data; a site made for another
run, or edited since, is refused by name."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from busi_utils.core.errors import RunFolderError, SiteError
from busi_utils.core.files import atomic_write_json, file_sha256, read_json
from busi_utils.core.runfolder import RunPaths

SITE_VERSION = 1
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MANIFEST, STATE, EXPORTS = "manifest.json", "state.pt", "exports"


def check_name(name: str) -> str:
    """A site name is a plain folder name: letters, digits, ``_ . -``."""
    if not NAME.match(str(name)):
        raise SiteError(f"site name {name!r}: use letters, digits, '_', '.' or '-' (at most 64), no path")
    return str(name)


def sites_folder(run_root: str | os.PathLike) -> Path:
    return RunPaths(Path(run_root)).sites


def site_folder(run_root: str | os.PathLike, name: str) -> Path:
    return RunPaths(Path(run_root)).site(check_name(name))


def run_fingerprint(run_root: str | os.PathLike) -> str:
    """One hash of the run's stage-1 fold U-Nets and stage-2 members and fusion (the hash
    notebook 04 stored when it finalised them): a site belongs to exactly these models."""
    paths = RunPaths(Path(run_root))
    summary = read_json(paths.classifier_summary) or {}
    models = summary.get("finalised", {}).get("models_sha256")
    unets = paths.fold_unet_files()
    if models is None or not unets:
        raise RunFolderError(f"{paths.root}: no finalised models to adapt (run notebooks 02-04, or `make course`)")
    h = hashlib.sha256(models.encode())
    for f in unets:
        h.update(f"{f.name}:{file_sha256(f)}".encode())
    return h.hexdigest()


def scans_fingerprint(files: list[tuple[str, str]]) -> str:
    """One hash of ``(name, sha256)`` pairs, order-free: which scans a site was fitted on."""
    return hashlib.sha256("\n".join(sorted(f"{n}:{s}" for n, s in files)).encode()).hexdigest()


@dataclass(frozen=True)
class Site:
    """A fitted site as read from its folder."""

    name: str
    folder: Path
    manifest: dict

    @property
    def exports(self) -> Path:
        return self.folder / EXPORTS

    @property
    def state_path(self) -> Path:
        return self.folder / STATE

    def load_state(self) -> dict:
        """The site's batch-norm statistics and weights (:mod:`torch` state dicts)."""
        import torch  # light CLI path: only a torch backend or an evaluation loads the state

        return torch.load(self.state_path, weights_only=True)

    def answer_params(self) -> dict:
        """What the site answers with: its decision rule, temperature and referral cutoff."""
        return {k: self.manifest[k] for k in ("fusion", "temperature", "entropy_cutoff")}


def read_site(run_root: str | os.PathLike, name: str) -> Site:
    """The site ``name`` of the run at ``run_root``, checked: it exists, it is whole (every
    file its manifest lists, with its hash), and it was fitted for these very models."""
    folder = site_folder(run_root, name)
    manifest = read_json(folder / MANIFEST)
    if manifest is None:
        known = sorted(p.name for p in sites_folder(run_root).glob("*") if (p / MANIFEST).exists())
        raise SiteError(
            f"{folder}: no such site (fitted sites: {', '.join(known) or 'none'}; make one with serve.adapt)"
        )
    if manifest.get("version") != SITE_VERSION:
        raise SiteError(f"{folder / MANIFEST}: site format {manifest.get('version')}, this code reads {SITE_VERSION}")
    if manifest.get("run") != run_fingerprint(run_root):
        raise SiteError(f"{folder}: fitted for another run's models (re-fit it: serve.adapt --site {name} --force)")
    for rel, sha in manifest.get("files", {}).items():
        path = folder / rel
        if not path.exists() or file_sha256(path) != sha:
            raise SiteError(f"{path}: missing or changed since the site was fitted (re-fit it with --force)")
    return Site(str(name), folder, manifest)


def write_site(run_root: str | os.PathLike, name: str, manifest: dict, fill, force: bool = False) -> Path:
    """Write the site folder at once: ``fill(tmp)`` writes its files into a temporary folder,
    the manifest (with every file's hash) is written last, and the folder is renamed into place.
    An existing site is refused unless ``force``; then it is replaced only once the new one is whole."""
    folder = site_folder(run_root, name)
    if folder.exists() and not force:
        raise SiteError(f"{folder}: the site exists (use --force to replace it)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        fill(tmp)
        files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        atomic_write_json(tmp / MANIFEST, {**manifest, "version": SITE_VERSION, "site": name, "files": files})
        old = folder.with_name(f".{folder.name}.old{os.getpid()}")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def apply_state(seg_graph, graphs: dict, state: dict):
    """Copies of the run's inference graphs with the site's ``state`` put in (:mod:`torch`
    state dicts: batch-norm statistics, or whole fine-tuned U-Nets). Works on any segmenter
    graph with ``unets`` and classifier graphs with ``bodies``; the run's graphs are unchanged."""
    seg = copy.deepcopy(seg_graph)
    for unet, sd in zip(seg.unets, state.get("segmenter", [])):
        unet.load_state_dict(sd, strict=state.get("segmenter_kind") == "weights")
    out = {}
    for view, graph in graphs.items():
        out[view] = graph
        if view in state.get("views", {}):
            out[view] = copy.deepcopy(graph)
            for body, sd in zip(out[view].bodies, state["views"][view]):
                body.load_state_dict(sd, strict=False)
    return seg, out
