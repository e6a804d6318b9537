"""How long a fresh process takes to load Cellpose, as every `segment` command and Dask worker
does: cellpose's own import (its numba mask kernels compile in every process) against ours
(`cellpose_compat.cellpose_modules`: the kernels compile once and load from numba's cache).

Medians over BENCH_STARTUP_REPEATS fresh processes each (default 3), in alternating order,
after one untimed run of ours that fills the cache. "saved" is cellpose's time minus ours.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

REPEATS = int(os.environ.get("BENCH_STARTUP_REPEATS", 3))
IMPORTS = {
    "cellpose's import": "from cellpose import models, train",
    "cellsynth (kernels cached)": (
        "from pathlib import Path; import sys\n"
        "from cellsynth_cli.segment.cellpose_compat import cellpose_modules\n"
        "cellpose_modules(Path(sys.argv[1]))"
    ),
}


def _seconds(code: str, model_dir: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, model_dir], check=True)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as model_dir:
        _seconds(IMPORTS["cellsynth (kernels cached)"], model_dir)
        times: dict[str, list[float]] = {name: [] for name in IMPORTS}
        for _ in range(REPEATS):
            for name, code in IMPORTS.items():
                times[name].append(_seconds(code, model_dir))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print("| load Cellpose in a fresh process | seconds (median) |")
    print("|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.2f} |")
    saved = medians["cellpose's import"] - medians["cellsynth (kernels cached)"]
    print(f"saved per process: {saved:.2f} s")


if __name__ == "__main__":
    main()
