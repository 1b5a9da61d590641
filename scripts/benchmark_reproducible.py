"""What reproducible mode costs on this machine: training-step time of the course's two kinds of
network (the light U-Net at 96 px, the Lite0 classifier at 96 px, channels-last as the course trains it), each in a fresh process with
the mode on and off, alternating so that a busy minute hurts both alike.

    python scripts/benchmark_reproducible.py [--rounds 3]

Rows go to ``benchmarks/reproducible.csv`` (median ms per image of each mode, the instruction set
each used, calib_ms). A measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from busi_utils.core import reproducible
from busi_utils.evaluation import benchmark

CHILD = r"""
import json, time, busi_utils, torch
from busi_utils.evaluation import benchmark
from busi_utils.core import reproducible
from busi_utils.stage2 import networks

def step_ms(model, x, y, loss_fn, repeats=5):
    opt = torch.optim.AdamW(model.parameters())
    for k in range(repeats + 2):
        if k == 2:
            start = time.perf_counter()
        loss = loss_fn(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    return (time.perf_counter() - start) / repeats / len(x) * 1000

torch.manual_seed(0)
lite0 = networks.build_classifier("lite0", 2, pretrained=False, head="linear").to(memory_format=torch.channels_last)
x = torch.randn(16, 2, 96, 96).contiguous(memory_format=torch.channels_last)  # as the course trains stage 2
y = torch.randint(0, 3, (16,))
print(json.dumps({"unet_ms": benchmark.calibration_ms(),
                  "lite0_ms": step_ms(lite0, x, y, torch.nn.CrossEntropyLoss()),
                  "isa": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}))
"""


def measure(mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in reproducible.PINS}
    env[reproducible.ENV_SWITCH] = mode
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"1": [], "0": []}
    for _ in range(args.rounds):
        for mode in runs:
            runs[mode].append(measure(mode))
    meta = benchmark.machine_info()
    cpu = reproducible.describe()["cpu"]
    rows = []
    for mode, results in runs.items():
        row = {"mode": "reproducible" if mode == "1" else "default", "isa": results[0]["isa"],
               "threads": results[0]["threads"], "rounds": len(results),
               **{k: round(statistics.median(r[k] for r in results), 2) for k in ("unet_ms", "lite0_ms")},
               "cpu": cpu, **meta}  # fmt: skip
        rows.append(row)
        print(row)
    rep, default = rows
    for k in ("unet_ms", "lite0_ms"):
        print(f"{k}: reproducible / default = {rep[k] / default[k]:.2f}")
    benchmark.append_rows(Path(benchmark.benchmarks_dir()) / "reproducible.csv", rows, ["mode", "cpu", "date"])


if __name__ == "__main__":
    main()
