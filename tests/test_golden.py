"""One number on every machine of a processor model: in reproducible mode a tiny U-Net and a tiny
classifier, trained with the course's own code, end with the committed weights of this processor
(``golden_hashes.json``), whatever it could do beyond AVX2. An AMD EPYC and an Intel Xeon, both
pinned, end with other weights, so each recorded processor (a vendor, or a vendor's model) has
its own hash, and a processor without one skips, saying so; that the pins took effect is checked
on every AVX2 machine. The negative control trains under another instruction set and must
end elsewhere, or the hash would prove nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from busi_utils.core import reproducible

HERE = Path(__file__).parent
GOLDEN = json.loads((HERE / "golden_hashes.json").read_text())

pytestmark = [
    pytest.mark.skipif(
        not reproducible.supports_pinned_isa(),
        reason="this processor lacks AVX2 (or is not x86-64): the pins cannot hold",
    ),
    pytest.mark.slow,
]


def _train(tmp_path: Path, **env: str) -> dict:
    out = tmp_path / "hashes.json"
    inherited = {k: v for k, v in os.environ.items() if k not in reproducible.PINS}  # the child pins (or not) itself
    full = {**inherited, "BUSI_CACHE": str(tmp_path / "cache"), **env}
    done = subprocess.run([sys.executable, str(HERE / "golden_train.py"), "--out", str(out)], env=full,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def pinned(tmp_path_factory) -> dict:
    return _train(tmp_path_factory.mktemp("golden"), BUSI_REPRODUCIBLE="1")


def golden_for(entries: list[dict], processor: dict[str, str]) -> dict | None:
    """The recorded hashes whose ``match`` agrees with every field given of this processor; of
    several, the most specific (a model's entry before its vendor's)."""
    found = [e for e in entries if all(processor.get(k) == v for k, v in e["match"].items())]
    return max(found, key=lambda e: len(e["match"])) if found else None


def test_golden_for_matches_the_processor_it_was_made_on():
    entries = [
        {"match": {"vendor_id": "AuthenticAMD"}, "unet": "a"},
        {"match": {"vendor_id": "GenuineIntel", "model": "167"}},
    ]
    assert golden_for(entries, {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17"})["unet"] == "a"
    assert (
        golden_for(entries, {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "143"}) is None
    )  # another model
    assert golden_for(entries, {}) is None  # no /proc/cpuinfo: nothing to compare with
    model = {"match": {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17"}, "unet": "b"}
    assert (
        golden_for([*entries, model], {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17"})["unet"] == "b"
    )


def test_every_recorded_hash_names_its_processor():
    for version, entries in ((v, e) for v, e in GOLDEN.items() if v != "about"):
        for entry in entries:
            assert entry["match"].get("vendor_id") and entry["unet"] and entry["classifier"], (version, entry)


def test_the_pins_take_effect(pinned):
    """On every AVX2 machine, recorded processor or not: the child trained with AVX2 and two threads."""
    assert (pinned["isa_in_use"], pinned["threads"], pinned["reproducible"]) == ("AVX2", reproducible.THREADS, True)


def test_reproducible_mode_trains_the_committed_weights(pinned):
    versions = GOLDEN.get(pinned["torch"])
    if versions is None:
        pytest.skip(f"no golden hash for torch {pinned['torch']} (requirements.txt pins {', '.join(GOLDEN)})")
    golden = golden_for(versions, pinned["processor"])
    if golden is None:
        made_on = "; ".join(e["made_on"] for e in versions)
        pytest.skip(f"no golden hash for this processor {pinned['processor']} ({pinned['cpu']}); recorded: {made_on}. "
                    "An Intel Xeon and an AMD EPYC, both pinned, trained other weights: add this one's from golden_train.py")  # fmt: skip
    assert {k: pinned[k] for k in ("unet", "classifier")} == {k: golden[k] for k in ("unet", "classifier")}, (
        f"{pinned['cpu']} trained other weights than {golden['made_on']}: reproducible mode does not hold here"
    )


def test_another_instruction_set_trains_other_weights(pinned, tmp_path):
    other = _train(
        tmp_path, BUSI_REPRODUCIBLE="0", ONEDNN_MAX_CPU_ISA="SSE41", ATEN_CPU_CAPABILITY="default", OMP_NUM_THREADS="2"
    )
    assert other["isa_in_use"] == "DEFAULT" and not other["reproducible"]
    assert other["unet"] != pinned["unet"] and other["classifier"] != pinned["classifier"]


def test_the_switch_and_the_pins(monkeypatch):
    env = {"OMP_NUM_THREADS": "1", reproducible.ENV_SWITCH: "0"}
    assert reproducible.pin_environment(env) == {} and env["OMP_NUM_THREADS"] == "1"  # off: nothing touched
    env[reproducible.ENV_SWITCH] = "1"
    assert reproducible.pin_environment(env) == reproducible.PINS
    assert env["OMP_NUM_THREADS"] == str(reproducible.THREADS)  # on: a global setting does not win silently


@pytest.mark.parametrize("first, honest", [("import busi_utils, torch", True), ("import torch, busi_utils", False)])
def test_describe_says_whether_the_pins_came_before_torch(first, honest):
    """A kernel that imported torch before busi_utils (and inherited no pins) is not called reproducible."""
    code = f"{first}\nfrom busi_utils.core import reproducible\nprint(reproducible.describe()['reproducible'])"
    env = {k: v for k, v in os.environ.items() if k not in reproducible.PINS}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == str(honest), done.stderr[-2000:]
