"""The course runner's records: a resumed notebook does not rewrite the course's time."""

from __future__ import annotations

import shutil

from busi_utils import course
from busi_utils.core import files
from busi_utils.core.runfolder import RunPaths
from busi_utils.evaluation import report


def test_a_resume_is_logged_and_a_computing_run_replaces_the_time():
    timing = {"notebooks": {"04_x": 100.0}, "resumed": []}
    course.record_time(timing, "04_x", 12.0, computed=False)
    assert timing["notebooks"]["04_x"] == 100.0 and timing["resumed"][0]["seconds"] == 12.0
    course.record_time(timing, "04_x", 90.0, computed=True)
    assert timing["notebooks"]["04_x"] == 90.0
    course.record_time(timing, "05_y", 7.0, computed=False)  # no earlier time: this run is its time
    assert timing["notebooks"]["05_y"] == 7.0


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
