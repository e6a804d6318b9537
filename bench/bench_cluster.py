"""Per-volume stages in-process vs on a Dask LocalCluster (--cluster local:N), same machine.

Rows: `simulate celegans` (8 full-size volumes) and `synthesize` (4 small 3D volumes, a
default 3D UNet, 20 DDPM steps), each in-process, on local:1 and on local:2. Times are
wall-clock seconds for the whole stage including the cluster's start and shutdown (what a
user waits for), medians over BENCH_CLUSTER_REPEATS runs (default 2) taken in alternating
order. "vs in-process" is the in-process time over the row's time (> 1 = faster); the local:1
row is the overhead of the Dask path itself (target: within 5 %). Most of it is fixed: the
last row times starting a LocalCluster of 1 worker that imports cellsynth's synthesis code
(torch) and shutting it down, with no task; "per-volume overhead" subtracts it.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPEATS = int(os.environ.get("BENCH_CLUSTER_REPEATS", 2))
MODES = (None, "local:1", "local:2")
N_SIMULATE = 8
N_SYNTHESIZE = 4
SYNTH_SHAPE = [32, 96, 96]


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _simulate(out: Path, cluster: str | None) -> None:
    from cellsynth_cli.simulate.config import load_preset
    from cellsynth_cli.simulate.dataset import simulate_dataset

    simulate_dataset(load_preset("celegans"), N_SIMULATE, out, seed=0, cluster=cluster)


def _prepare_synthesis(root: Path) -> tuple[Path, Path]:
    """A default-size 3D model (one training step: speed does not depend on training) and
    small 3D sketches."""
    from cellsynth_cli.ddpm.config import TrainConfig
    from cellsynth_cli.ddpm.train import train
    from cellsynth_cli.simulate.config import load_preset, replace
    from cellsynth_cli.simulate.dataset import simulate_dataset

    data = Path(__file__).resolve().parents[1] / "data" / "cells3d"
    run = root / "model"
    train(TrainConfig(data=str(data), dims=3, patch=(16, 64, 64), steps=1, batch=1), run)
    config = replace(
        load_preset("nuclei"),
        {"shape": SYNTH_SHAPE, "voxel_size": [1.0] * 3, "radius": [6.0, 9.0], "n_cells": [8, 16]},
        source="bench",
    )
    sketches = root / "sketches"
    simulate_dataset(config, N_SYNTHESIZE, sketches, seed=0)
    return run, sketches


def _synthesize(run: Path, sketches: Path, out: Path, cluster: str | None) -> None:
    from cellsynth_cli.ddpm.synthesize import SynthesisOptions, synthesize_dataset

    options = SynthesisOptions(t_start=600, steps=20, device="cpu")
    synthesize_dataset(run, sketches, out, options, cluster=cluster)


def _cluster_start() -> None:
    import importlib

    from cellsynth_cli.runtime.cluster import connect, parse_cluster

    with connect(parse_cluster("local:1")) as client:
        client.run(importlib.import_module, "cellsynth_cli.ddpm.synthesize")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    try:
        run, sketches = _prepare_synthesis(root)
        stages = {
            f"simulate celegans x{N_SIMULATE}": lambda out, c: _simulate(out, c),
            f"synthesize {N_SYNTHESIZE} x {'x'.join(map(str, SYNTH_SHAPE))}": (
                lambda out, c: _synthesize(run, sketches, out, c)
            ),
        }
        print(f"{'stage':34s} {'mode':>10s} {'seconds':>8s} {'vs in-process':>14s}")
        results: dict[str, tuple[float, float]] = {}
        for stage, fn in stages.items():
            times: dict[str | None, list[float]] = {mode: [] for mode in MODES}
            for repeat in range(REPEATS):
                order = MODES if repeat % 2 == 0 else tuple(reversed(MODES))
                for mode in order:
                    out = root / f"out-{len(os.listdir(root))}"
                    times[mode].append(_timed(lambda o=out, m=mode, f=fn: f(o, m)))
                    shutil.rmtree(out, ignore_errors=True)
            base = statistics.median(times[None])
            for mode in MODES:
                t = statistics.median(times[mode])
                print(
                    f"{stage:34s} {mode or 'in-process':>10s} {t:8.1f} {base / t:13.2f}x",
                    flush=True,
                )
            results[stage] = (base, statistics.median(times["local:1"]))
        start = statistics.median(_timed(_cluster_start) for _ in range(REPEATS))
        print(f"{'start + stop local:1 (no task)':34s} {'':>10s} {start:8.1f}")
        for stage, (base, one) in results.items():
            overhead = (one - start - base) / base
            print(f"per-volume overhead of local:1, {stage}: {overhead:+.1%}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
