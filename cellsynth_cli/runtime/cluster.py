"""Per-volume work on Dask (`--cluster`): in this process, a LocalCluster, or a scheduler.

One task = one volume. A task is a plain function of a picklable job that writes its volume
atomically into the shared output directory and returns a small summary dict, so the same
function runs in-process or on any Dask worker. Dask does the scheduling and the fault
tolerance: a task whose worker dies is re-run on another worker (up to the scheduler's
`allowed-failures`), and since outputs appear only by an atomic rename, a killed task leaves
no half-written volume behind.

Reproducibility: every volume's random numbers come from the seed and its name, so simulate
gives byte-identical volumes in every mode. Synthesis is byte-identical for the same number
of torch threads per volume (CELLSYNTH_TORCH_THREADS, set for LocalCluster workers); across
different thread counts it differs by float rounding (~1e-5 of the intensity range), since
PyTorch's CPU GroupNorm on channels-last maps splits its sums by thread count. A
thread-independent GroupNorm measured 1.4-1.5x slower per network call on CPU.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsynth_cli.errors import InputError

THREADS_ENV = "CELLSYNTH_TORCH_THREADS"  # torch threads per task on a worker
TIMEOUT_ENV = "CELLSYNTH_DASK_TIMEOUT"  # how long to wait for a scheduler / its workers
CLUSTER_HELP = (
    "Where per-volume work runs. Default: this process. local:N = a Dask LocalCluster of N "
    "worker processes on this machine (cores split between them). tcp://HOST:PORT or a "
    "scheduler file (JSON) = an existing Dask scheduler (dask scheduler / dask worker, "
    "dask-jobqueue on SLURM, dask-kubernetes); its workers must see the output directory."
)

_LOCAL = re.compile(r"^local:(\d+)$")
_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$")


@dataclass(frozen=True)
class ClusterSpec:
    kind: str  # "local" | "address" | "scheduler-file"
    workers: int = 0  # local only
    address: str = ""  # address or scheduler-file path

    def describe(self) -> str:
        if self.kind == "local":
            return f"a local Dask cluster of {self.workers} worker process(es)"
        return f"the Dask scheduler at {self.address}"


def parse_cluster(spec: str | None) -> ClusterSpec | None:
    """None (in-process), local:N, a scheduler address or an existing scheduler file."""
    if spec is None or spec == "":
        return None
    match = _LOCAL.match(spec)
    if match:
        workers = int(match.group(1))
        if workers < 1:
            raise InputError(f"--cluster {spec}: local:N needs N >= 1 worker processes")
        return ClusterSpec("local", workers=workers)
    if _ADDRESS.match(spec):
        return ClusterSpec("address", address=spec)
    if spec.endswith(".json"):
        if not Path(spec).is_file():
            raise InputError(f"--cluster {spec}: no such scheduler file")
        return ClusterSpec("scheduler-file", address=spec)
    raise InputError(
        f"--cluster {spec!r}: expected local:N, tcp://HOST:PORT or a scheduler file (.json)"
    )


def connect_timeout() -> str:
    return os.environ.get(TIMEOUT_ENV, "20s")


def local_threads(workers: int) -> int:
    """Cores per worker process of a LocalCluster (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // workers)


@contextmanager
def connect(spec: ClusterSpec) -> Iterator[Any]:
    """A dask.distributed Client for SPEC; a LocalCluster lives as long as the block."""
    from distributed import Client, LocalCluster

    if spec.kind == "local":
        threads = local_threads(spec.workers)
        # one task at a time per worker process, each with its share of the cores for torch
        env = {THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads)}
        with (
            LocalCluster(
                n_workers=spec.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
                env=env,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client
        return
    try:
        if spec.kind == "scheduler-file":
            client = Client(scheduler_file=spec.address, timeout=connect_timeout())
        else:
            client = Client(spec.address, timeout=connect_timeout())
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot reach {spec.describe()}: {reason}") from None
    with client:
        yield client


def check_workers(client: Any, out_dir: Path, writes: bool = True) -> None:
    """Every worker imports cellsynth and can write (or read) OUT_DIR, or one clear error."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    if not workers:
        client.wait_for_workers(1, timeout=connect_timeout())
    imported = client.run(importlib.import_module, "cellsynth_cli", on_error="return")
    for worker, result in imported.items():
        if isinstance(result, BaseException):
            raise InputError(f"Dask worker {worker} cannot import cellsynth ({result})")
    target = str(Path(out_dir).resolve())
    mode, verb = (os.W_OK, "write") if writes else (os.R_OK, "read")
    allowed = client.run(os.access, target, mode, on_error="return")
    for worker, ok in allowed.items():
        if ok is not True:
            raise InputError(
                f"Dask worker {worker} cannot {verb} the directory {target}; workers need a "
                "shared file system path"
            )


def limit_torch_threads() -> None:
    """Torch threads as CELLSYNTH_TORCH_THREADS says (a worker's share of the cores), if set."""
    threads = os.environ.get(THREADS_ENV)
    if threads:
        import torch

        if torch.get_num_threads() != int(threads):
            torch.set_num_threads(int(threads))


def _run_on_worker(task: Callable[[Any], dict], job: Any) -> dict:
    limit_torch_threads()
    return task(job)


def run_per_volume(
    task: Callable[[Any], dict],
    jobs: Sequence[Any],
    names: Sequence[str],
    cluster: str | None,
    out_dir: Path,
    stage: str,
    on_done: Callable[[dict], None] | None = None,
    writes: bool = True,
) -> list[dict]:
    """TASK(job) for every job, here or on the Dask cluster; results in completion order.

    In this process TASK may be any callable (e.g. a partial carrying progress callbacks); on a
    cluster it must pickle.

    The first task that fails cancels the rest and its error is raised here (an InputError
    raised on a worker arrives as the same InputError).
    """
    spec = parse_cluster(cluster)
    results: list[dict] = []
    if spec is None or not jobs:
        limit_torch_threads()  # CELLSYNTH_TORCH_THREADS applies here too (same bytes as a worker)
        for job in jobs:
            results.append(task(job))
            if on_done:
                on_done(results[-1])
        return results
    from distributed import as_completed

    from cellsynth_cli import io  # numpy and zarr: not at import (the CLI's start-up imports us)

    if writes:
        out_dir.mkdir(parents=True, exist_ok=True)
    with connect(spec) as client:
        check_workers(client, out_dir, writes)
        token = secrets.token_hex(4)
        futures = [
            client.submit(_run_on_worker, task, job, key=f"cellsynth-{stage}-{name}-{token}")
            for job, name in zip(jobs, names, strict=True)
        ]
        try:
            for future in as_completed(futures):
                results.append(future.result())
                if on_done:
                    on_done(results[-1])
        except BaseException:
            client.cancel(futures)
            raise
        finally:
            # a worker killed while writing leaves its hidden temporary behind
            io.remove_temporaries(out_dir, names)
    return results
