"""`make bench`: every benchmark in this folder, one after the other."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

BENCHMARKS = [
    "bench_simulate",
    "bench_unet",
    "bench_synthesis",
    "bench_synthesis_3d",
    "bench_guidance",
    "bench_cluster",
    "bench_startup",
    "bench_gpu",
]

if __name__ == "__main__":
    only = sys.argv[1:]
    for name in BENCHMARKS:
        if only and name not in only:
            continue
        print(f"\n== {name} ==", flush=True)
        start = time.perf_counter()
        importlib.import_module(name).main()
        print(f"({name}: {time.perf_counter() - start:.0f} s)", flush=True)
