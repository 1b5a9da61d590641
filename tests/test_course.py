"""The course runner's records: a resumed notebook does not rewrite the course's time."""

from __future__ import annotations

import shutil

from busi_utils import course
from busi_utils.core import files
from busi_utils.core.config import repo_root
from busi_utils.core.runfolder import RunPaths
from busi_utils.evaluation import report


def test_a_resume_is_logged_and_a_computing_run_replaces_the_time():
    timing = {"notebooks": {"04_x": 100.0}, "resumed": []}
    course.record_time(timing, "04_x", 12.0, [])
    assert timing["notebooks"]["04_x"] == 100.0 and timing["resumed"][0]["seconds"] == 12.0
    course.record_time(timing, "04_x", 90.0, ["models/a.pt", "preds/a.csv"])
    assert timing["notebooks"]["04_x"] == 90.0 and timing["products"]["04_x"] == ["models/a.pt", "preds/a.csv"]
    course.record_time(timing, "05_y", 7.0, [])  # no earlier time: this run is its time
    assert timing["notebooks"]["05_y"] == 7.0


def test_a_partly_resumed_notebook_keeps_the_full_time():
    """A notebook that recomputes only part of what it wrote (a cleared cache, beside models it
    loads) took less than the course costs: its time stays, the partial run is logged."""
    timing = {"notebooks": {}, "resumed": []}
    course.record_time(timing, "05_y", 389.0, ["metrics.json", "models/gt.pt", "preds/random_split.json"])
    course.record_time(timing, "05_y", 229.0, ["metrics.json", "preds/random_split.json"])
    assert timing["notebooks"]["05_y"] == 389.0
    assert timing["resumed"][-1]["recomputed"] == ["metrics.json", "preds/random_split.json"]
    course.record_time(timing, "05_y", 400.0, ["metrics.json", "models/gt.pt", "preds/random_split.json", "x"])
    assert timing["notebooks"]["05_y"] == 400.0  # everything again (and more): a full run, its time


def test_changed_products_names_created_changed_and_removed_files():
    before = {"a": "1", "b": "2", "c": "3"}
    assert course.changed_products(before, {"a": "1", "b": "9", "d": "4"}) == ["b", "c", "d"]
    assert course.changed_products(before, dict(before)) == []


def test_resuming_a_finished_quick_run_keeps_the_course_seconds(quick_paths, tmp_path):
    run = RunPaths(tmp_path / "run")
    shutil.copytree(quick_paths.root, run.root)
    before = report.timing_block(run)
    fingerprint = course.products_fingerprint(run)
    course.run_course("quick", str(run.root), only=["04"])
    assert course.products_fingerprint(run) == fingerprint  # 04 resumed: it recomputed nothing
    assert report.timing_block(run) == before
    assert files.read_json(run.metrics_json)["timing"]["course_seconds"] == before["course_seconds"]
    assert report.read_timing(run)["resumed"][-1]["notebook"] == "04_mask_aware_classifier"
    # a product that changes makes the run count as computing (the fingerprint sees it)
    (run.preds / "extra.csv").write_text("x\n")
    assert course.products_fingerprint(run) != fingerprint


def test_temporaries_of_a_killed_writer_are_removed_and_a_live_writer_s_kept(tmp_path):
    import os
    import subprocess
    import sys

    from busi_utils.core.files import remove_stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "models").mkdir()
    stale = [tmp_path / "models" / f".unet_fold1.tmp{pid}.pt", tmp_path / f".unet_fold1.time.tmp{pid}.json"]
    for p in stale:
        p.write_bytes(b"half")
    (tmp_path / f".folder.tmp{pid}").mkdir()  # atomic_path writes folders too
    live = tmp_path / "models" / f".classifier.tmp{os.getpid()}.pt"
    live.write_bytes(b"being written")
    kept = [tmp_path / ".hidden", tmp_path / "models" / "notes.tmp1.txt"]  # not atomic_path's names
    for p in kept:
        p.write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([*stale, tmp_path / f".folder.tmp{pid}"])
    assert live.exists() and all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_the_run_folder_parameter_names_no_machine_folder_inside_the_checkout(tmp_path):
    """The executed chapters (and the book) show ``run_dir = "../runs/cpu"``, not this machine's
    path; a run folder outside the checkout stays absolute (a relative path there would be a maze)."""
    assert course.as_parameter(repo_root() / "runs" / "cpu") == "../runs/cpu"
    assert course.as_parameter(tmp_path / "run") == str((tmp_path / "run").resolve())
