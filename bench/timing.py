"""Timing helpers shared by the benchmarks: thread count and a median wall-clock time."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch


def set_threads() -> int:
    """One intra-op thread per available core (never more: oversubscription kills conv speed)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    n = max(1, min(torch.get_num_threads(), cores))
    torch.set_num_threads(n)
    return n


def median_time(fn: Callable[[], object], runs: int, warmup: int = 0) -> float:
    """Median seconds of `runs` calls of fn after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
