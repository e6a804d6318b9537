"""--cluster: per-volume stages on Dask give the same volumes as in-process, survive a
killed worker, and refuse bad cluster values with one line."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from cellsynth_cli import io
from cellsynth_cli.ddpm.config import TrainConfig
from cellsynth_cli.ddpm.synthesize import SynthesisOptions, synthesize_dataset
from cellsynth_cli.ddpm.train import train
from cellsynth_cli.errors import InputError
from cellsynth_cli.runtime.cluster import THREADS_ENV, parse_cluster
from cellsynth_cli.simulate.config import load_preset, replace
from cellsynth_cli.simulate.dataset import simulate_dataset
from tests.conftest import DSB_DIR, run_cellsynth

SMALL = ["--shape", "48,48", "--set", "n_cells=3,6", "--set", "radius=5,8"]


def same_volumes(a: Path, b: Path) -> list[str]:
    """Names of the volumes of A, after checking each array equals B's byte for byte."""
    names = [io.volume_name(p) for p in io.list_volumes(a)]
    assert names == [io.volume_name(p) for p in io.list_volumes(b)]
    for name in names:
        va, vb = io.read_volume(io.volume_path(a, name)), io.read_volume(io.volume_path(b, name))
        for field in ("image", "masks", "sketch"):
            x, y = getattr(va, field), getattr(vb, field)
            assert (x is None) == (y is None), (name, field)
            if x is not None:
                assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), (name, field)
    return names


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "value, message",
    [
        ("local:0", "N >= 1"),
        ("local:two", "expected local:N"),
        ("nonsense", "expected local:N"),
        ("missing-scheduler.json", "no such scheduler file"),
        ("tcp://127.0.0.1:9", "cannot reach the Dask scheduler at tcp://127.0.0.1:9"),
    ],
)
def test_bad_cluster_values_give_one_line_and_exit_2(tmp_path, value, message):
    result = run_cellsynth(
        "simulate", "hela", "-n", 1, "-o", tmp_path / "sim", "--cluster", value, *SMALL,
        env={"CELLSYNTH_DASK_TIMEOUT": "2s"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "sim").exists() or not any((tmp_path / "sim").iterdir())


def test_parse_cluster_accepts_the_documented_forms(tmp_path):
    assert parse_cluster(None) is None
    assert parse_cluster("local:3").workers == 3
    assert parse_cluster("tcp://head:8786").address == "tcp://head:8786"
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text("{}")
    assert parse_cluster(str(scheduler_file)).kind == "scheduler-file"
    with pytest.raises(InputError):
        parse_cluster("local:-1")


def test_simulate_on_local_cluster_is_byte_identical_and_resumes(tmp_path):
    here, there = tmp_path / "here", tmp_path / "there"
    result = run_cellsynth("simulate", "hela", "-n", 4, "-o", here, "--seed", 3, *SMALL)
    assert result.returncode == 0, result.stderr
    args = ["simulate", "hela", "-n", 2, "-o", there, "--seed", 3, "--cluster", "local:2"]
    assert run_cellsynth(*args, *SMALL).returncode == 0
    # a second run on the cluster resumes the set: volumes 2 and 3 are added
    args = ["simulate", "hela", "-n", 4, "-o", there, "--seed", 3, "-j", "2", "--resume"]
    result = run_cellsynth(*args, *SMALL)
    assert result.returncode == 0, result.stderr
    assert "kept 2 already there" in result.stderr
    assert len(same_volumes(here, there)) == 4
    assert leftovers(there) == []


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddpm")
    config = TrainConfig(
        data=str(DSB_DIR), dims=2, patch=(32, 32), steps=30, batch=2, lr=2e-3, channels=(8, 16)
    )
    train(config, run)
    return run


@pytest.fixture(scope="module")
def sketches(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sketches")
    config = replace(
        load_preset("hela"),
        {"shape": [96, 96], "n_cells": [4, 8], "radius": [6, 9]},
        source="test",
    )
    simulate_dataset(config, 6, out, seed=1)
    return out


def test_synthesize_on_local_cluster_is_byte_identical_after_a_worker_is_killed(
    tiny_model, sketches, tmp_path
):
    import torch
    from distributed import Client, LocalCluster

    options = SynthesisOptions(t_start=120, steps=None, seed=4, device="cpu")
    here = tmp_path / "here"
    # in-process with the workers' thread count: PyTorch's CPU GroupNorm splits its sums by
    # thread count, so equal bytes need equal threads per volume (see cluster.py)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        synthesize_dataset(tiny_model, sketches, here, options)
    finally:
        torch.set_num_threads(threads)

    killed: list[str] = []
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=None, env={THREADS_ENV: "1"}
        ) as cluster,
        Client(cluster) as observer,
    ):
        lock = threading.Lock()

        def kill_a_busy_worker(result: dict) -> None:
            """After the first volume, SIGKILL a worker in the middle of its next one."""
            with lock:
                if killed:
                    return
                busy = [w for w, keys in observer.processing().items() if keys]
                if not busy:
                    return
                pid = observer.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(busy[0])

        there = tmp_path / "there"
        results = synthesize_dataset(
            tiny_model,
            sketches,
            there,
            options,
            cluster=cluster.scheduler_address,
            on_done=kill_a_busy_worker,
        )
    assert killed, "no worker was busy to be killed: the test did not exercise a failure"
    assert sorted(r["name"] for r in results) == [f"hela_{i:04d}" for i in range(6)]
    assert len(same_volumes(here, there)) == 6
    assert leftovers(there) == []


def test_a_rerun_task_returns_its_volume_instead_of_writing_it_again(
    tiny_model, sketches, tmp_path
):
    """A task re-run after its worker died (same run token) does not write twice."""
    from cellsynth_cli.ddpm.checkpoint import checkpoint_path
    from cellsynth_cli.ddpm.synthesize import VolumeJob, synthesize_one

    ckpt = checkpoint_path(tiny_model)
    job = VolumeJob(
        model=ckpt,
        model_checksum=io.file_checksum(ckpt),
        sketch=io.list_volumes(sketches)[0],
        name="hela_0000",
        out_dir=tmp_path,
        options=SynthesisOptions(t_start=20, seed=1, device="cpu"),
        n_steps=20,
        overwrite=False,
        run="token-a",
    )
    first = synthesize_one(job)
    stamp = (tmp_path / "hela_0000.zarr" / "zarr.json").stat().st_mtime_ns
    again = synthesize_one(job)
    assert again["path"] == first["path"]
    assert (tmp_path / "hela_0000.zarr" / "zarr.json").stat().st_mtime_ns == stamp
    # another run must not mistake it for its own
    other = VolumeJob(**{**job.__dict__, "run": "token-b"})
    with pytest.raises(InputError, match="already exists"):
        synthesize_one(other)
    assert np.isfinite(io.read_volume(Path(first["path"])).image).all()
