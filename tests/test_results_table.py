"""The README's results and figures come only from a real-data run of a full profile."""

from __future__ import annotations

import json
import subprocess
import sys

from busi_utils.core import config

SCRIPT = config.repo_root() / "scripts" / "results_table.py"


def fake_run(tmp_path, kind: str, profile: str):
    run = tmp_path / f"{kind}_{profile}"
    (run / "figures").mkdir(parents=True)
    (run / "figures" / "roc_curves.png").write_bytes(b"\x89PNG fake")
    (run / "metrics.json").write_text(json.dumps({"data": {"kind": kind}, "profile": profile}))
    return run


def readme(tmp_path):
    path = tmp_path / "repo" / "README.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    return path


def run_script(metrics, readme_path):
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(metrics), "--readme", str(readme_path)], capture_output=True, text=True
    )


def test_a_synthetic_or_quick_run_writes_neither_table_nor_figures(tmp_path):
    for kind, profile in (("synthetic", "cpu"), ("busi", "quick")):
        target = readme(tmp_path)
        r = run_script(fake_run(tmp_path, kind, profile) / "metrics.json", target)
        assert r.returncode == 0 and "not written" in r.stderr
        assert "old" in target.read_text() and not (target.parent / "figures").exists()


def test_publish_figures_copies_every_plot_whole(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from results_table import publish_figures

    run = fake_run(tmp_path, "busi", "cpu")
    dest = tmp_path / "repo" / "figures"
    assert publish_figures(run / "figures", dest) == ["roc_curves.png"]
    assert (dest / "roc_curves.png").read_bytes() == b"\x89PNG fake"
    assert not list(dest.glob(".*.tmp"))


def test_the_seed_spread_table_shows_the_external_columns_only_when_every_seed_has_them(tmp_path, monkeypatch):
    import pandas as pd

    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    from results_table import seed_spread_table

    rows = []
    for seed, f1, ext in ((1, 0.78, 0.55), (2, 0.80, 0.59), (42, 0.82, 0.51)):
        for variant, shift in (("method", 0.0), ("image_only", -0.05)):
            rows.append(
                dict(
                    seed=seed, variant=variant, accuracy=f1, macro_f1=f1 + shift, malignant_recall=0.9, auc_ovr=0.93,
                    fusion="mean", members=2, calib_ms=30.0, external_set="BUS-UCLM", ext_macro_f1=ext + shift,
                    ext_benign_malignant_auc=0.75, ext_lesions_called_normal=0.25,
                )
            )  # fmt: skip
    rows = [dict(r, profile="cpu") for r in rows]
    quick = dict(rows[0], profile="quick", members=3, macro_f1=0.1)  # a test run's row: another profile, never shown
    csv = tmp_path / "seed_spread.csv"
    pd.DataFrame([*rows, quick]).to_csv(csv, index=False)
    text = seed_spread_table(csv, "cpu")
    assert "in 2 of 3 seeds" not in text and "in 3 of 3 seeds" in text and "on BUS-UCLM" in text
    method = next(line for line in text.splitlines() if line.startswith("| `method`"))
    assert "0.550 ± 0.040 (0.510–0.590)" in method  # the external macro-F1 over the three seeds
    assert "(2 members per view" in text and "0.100" not in text
    head, rule = text.splitlines()[2:4]
    assert head.count("|") == rule.count("|") == method.count("|") == 10  # 9 columns, 3 of them external
    table = pd.DataFrame(rows)
    table.loc[table["seed"] == 42, "ext_macro_f1"] = None  # one seed not scored outside: no external column
    table.to_csv(csv, index=False)
    text = seed_spread_table(csv, "cpu")
    assert "external macro-F1" not in text and "external benign-vs-malignant AUC" in text
    head, rule = text.splitlines()[2:4]
    assert head.count("|") == rule.count("|") == 9


def _results_table_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("results_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _block(text: str, name: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    return text[text.index(start) + len(start) : text.index(end)].strip("\n")


def test_the_readme_blocks_are_what_the_committed_tables_render(tmp_path):
    """Every README block that scripts/results_table.py writes from a committed CSV says what that
    CSV renders today: a table edited by hand, or a CSV changed without re-rendering, fails."""
    rt = _results_table_module()
    root = config.repo_root()
    readme = (root / "README.md").read_text()
    bench = root / "benchmarks"
    renders = {
        "seg-benchmark": lambda d: rt.seg_benchmark_table(d / "segmentation.csv"),
        "cls-benchmark": lambda d: rt.cls_benchmark_table(d / "classifier.csv"),
        "seed-spread": lambda d: rt.seed_spread_table(d / "seed_spread.csv", "cpu"),
        "decision-benchmark": lambda d: rt.decision_table(d / "decision.csv"),
        "pipeline-seeds": lambda d: rt.pipeline_seeds_table(d / "pipeline_seeds.csv"),
    }
    for name, render in renders.items():
        assert _block(readme, name) == render(bench).strip("\n"), f"README block {name} differs from its CSV"
    changed = tmp_path / "benchmarks"  # the control: one number changed in a copy is seen
    changed.mkdir()
    import pandas as pd

    seg = pd.read_csv(bench / "segmentation.csv")
    seg.loc[0, "valid_dice_mean"] = seg.loc[0, "valid_dice_mean"] + 0.1
    seg.to_csv(changed / "segmentation.csv", index=False)
    assert _block(readme, "seg-benchmark") != renders["seg-benchmark"](changed).strip("\n")


def test_the_external_table_is_on_the_evaluation_patients_with_the_whole_set_beside(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    from results_table import external_lines

    scores = {
        "accuracy": 0.8, "macro_f1": 0.8, "malignant_recall": 0.8, "malignant_specificity": 0.9, "auc_ovr": 0.9,
        "benign_malignant_auc": 0.85,
    }  # fmt: skip
    scores.update({f"{k}_ci95": [0.7, 0.9] for k in list(scores)})
    away = {**scores, "lesions_called_normal": 0.12, "normals_called_lesion": 0.21, "lesions_called_normal_ci95": [0.1, 0.2],
            "normals_called_lesion_ci95": [0.15, 0.3]}  # fmt: skip
    ext = {"n_images": 408, "n_patients": 25, "dice_mean": 0.7, "dice_ci95": [0.6, 0.8], "patients": "evaluation",
           "variants": {"method": away},
           "whole_set": {"n_images": 683, "n_patients": 38, "dice_mean": 0.69, "dice_ci95": [0.6, 0.8],
                         "variants": {"method": {**away, "macro_f1": 0.61}}}}  # fmt: skip
    m = {"segmentation": {"dice_mean": 0.75}, "classification": {"method": scores}, "external": {"bus_uclm": ext}}
    text = "\n".join(external_lines(m))
    assert "evaluation patients**: 408 scans of 25 patients" in text
    row = next(line for line in text.splitlines() if line.startswith("| `method` | 0.800 |"))
    assert "0.210 (0.15–0.30)" in row  # normal scans called a lesion, with its interval
    assert "The whole set (683 scans of 38 patients, development patients included" in text and "0.610" in text
