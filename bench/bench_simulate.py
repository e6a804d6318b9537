"""Simulation speed and peak memory per preset at the paper's full sizes.

Each preset runs in a fresh subprocess (so peak RSS is its own), 3 times; the median time is
reported against the issue's target. Run with `make bench` or `python bench/bench_simulate.py`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

TARGET_SECONDS = {
    "celegans": 1.0,
    "tribolium": 5.0,
    "arabidopsis": 20.0,
    "hela": 0.5,
    "mouse-stem": 0.5,
}
TARGET_RSS_MB = 2048
REPEATS = 3

CHILD = r"""
import json, resource, sys, time
import numpy as np
from cellsynth_cli.simulate.config import load_preset
from cellsynth_cli.simulate.simulators import get_simulator
cfg = load_preset(sys.argv[1])
simulate = get_simulator(cfg.simulator)
times = []
for seed in range(int(sys.argv[2])):
    t = time.perf_counter()
    sim = simulate(cfg, np.random.default_rng(seed))
    times.append(time.perf_counter() - t)
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"times": times, "rss_mb": rss_mb, "cells": int(sim.masks.max()),
                  "shape": list(cfg.shape)}))
"""


def main() -> list[dict]:
    rows = []
    print(
        f"{'preset':<12} {'shape':<18} {'cells':>6} {'median s':>9} {'target s':>9} "
        f"{'time/target':>11} {'peak RSS MB':>12}"
    )
    for preset, target in TARGET_SECONDS.items():
        out = subprocess.run(
            [sys.executable, "-c", CHILD, preset, str(REPEATS)],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        median = statistics.median(result["times"])
        row = {
            "preset": preset,
            "median_s": median,
            "target_s": target,
            "ratio": median / target,
            "rss_mb": result["rss_mb"],
            "cells": result["cells"],
            "shape": result["shape"],
        }
        rows.append(row)
        ok = "ok" if median <= target and result["rss_mb"] <= TARGET_RSS_MB else "MISSED"
        print(
            f"{preset:<12} {str(tuple(row['shape'])):<18} {row['cells']:>6} {median:>9.2f} "
            f"{target:>9.1f} {row['ratio']:>11.2f} {row['rss_mb']:>12.0f}  {ok}"
        )
    return rows


if __name__ == "__main__":
    main()
