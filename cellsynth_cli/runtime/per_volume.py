"""The one runner of the per-volume stages (simulate, synthesize, segment predict): outputs to
keep (--resume) or replace (--overwrite), a run token, one job per volume left to make, run
here or on a Dask cluster (cluster.run_per_volume), one summary per volume sorted by name."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cellsynth_cli import io
from cellsynth_cli.runtime.cluster import run_per_volume


def run_stage(
    stage: str,
    names: Sequence[str],
    out_dir: Path,
    make_job: Callable[[int, str, str], Any],
    task: Callable[[Any], dict],
    cluster: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    check_kept: Callable[[Path], None] | None = None,
    check_jobs: Callable[[list[Any]], None] | None = None,
    on_kept: Callable[[str], None] | None = None,
    on_done: Callable[[dict], None] | None = None,
) -> list[dict]:
    """TASK(job) for each of NAMES without a finished output in OUT_DIR.

    make_job(index, name, run_token) builds a volume's job (the token lets a re-run task find
    what an earlier attempt of this run wrote); check_kept(path) vets each output --resume
    keeps (it must match this run's settings), check_jobs(jobs) the work before it starts;
    on_kept(name) reports a kept output, on_done(result) a finished one.
    """
    kept = io.outputs_to_keep(out_dir, names, overwrite, resume)
    for name in sorted(kept):
        if check_kept:
            check_kept(io.volume_path(out_dir, name))
    token = secrets.token_hex(8)
    jobs = [make_job(i, name, token) for i, name in enumerate(names) if name not in kept]
    if check_jobs:
        check_jobs(jobs)
    results = []
    for name in sorted(kept):
        if on_kept:
            on_kept(name)
        results.append({"name": name, "skipped": True})
    left = [name for name in names if name not in kept]
    results += run_per_volume(task, jobs, left, cluster, out_dir, stage, on_done)
    return sorted(results, key=lambda r: r["name"])
