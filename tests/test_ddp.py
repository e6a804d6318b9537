"""`cellsynth train` under torchrun (2 gloo processes on CPU): DistributedDataParallel, rank 0
writes, every rank its own patches, exact resume, and a checkpoint that loads anywhere."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cellsynth_cli.ddpm.checkpoint import load_model, read_checkpoint
from cellsynth_cli.ddpm.config import TrainConfig
from cellsynth_cli.ddpm.train import _rank_generator_state, train
from cellsynth_cli.runtime import distributed
from tests.conftest import DSB_DIR

TINY = ["--patch", "32,32", "--channels", "8,16", "--batch", "2", "--lr", "2e-3"]


def torchrun(*args, nproc: int = 2) -> subprocess.CompletedProcess:
    launcher = Path(sys.executable).parent / "torchrun"
    cellsynth = Path(sys.executable).parent / "cellsynth"
    command = [
        str(launcher if launcher.exists() else shutil.which("torchrun")),
        "--standalone",
        f"--nproc-per-node={nproc}",
        str(cellsynth),
        *map(str, args),
    ]
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def loss_rows(run: Path) -> list[int]:
    with open(run / "loss.csv") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_torchrun_trains_checkpoints_resumes_exactly_and_loads_single_process(tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    common = ["train", "--data", DSB_DIR, *TINY, "--checkpoint-every", 3, "--json"]
    torchrun(*common, "-o", whole, "--steps", 6)
    torchrun(*common, "-o", split, "--steps", 3)
    torchrun("train", "-o", split, "--resume", "--steps", 6, "--json")

    state = read_checkpoint(whole)
    assert state["world_size"] == 2 and state["step"] == 6
    # each rank drew its own patches and noise: their generators went different ways
    first, second = state["rank_generators"]
    assert not torch.equal(first, second)
    # rank 0 alone wrote the log: every step once
    assert loss_rows(whole) == list(range(1, 7))
    assert loss_rows(split) == list(range(1, 7))
    # resuming under torchrun restored every rank: the same weights as one uninterrupted run
    resumed = read_checkpoint(split)
    for key, value in state["ema"].items():
        assert torch.equal(value, resumed["ema"][key]), key
    for a, b in zip(state["rank_generators"], resumed["rank_generators"], strict=True):
        assert torch.equal(a, b)

    # the DDP checkpoint loads and resumes in a single process (rank 0's stream)
    assert load_model(whole).step == 6
    config = TrainConfig(data=str(DSB_DIR), dims=2, patch=(32, 32), steps=8)
    result = train(config, whole, resume=True)
    assert result.step == 8 and read_checkpoint(whole)["world_size"] == 1
    assert loss_rows(whole) == list(range(1, 9))


def test_single_process_checkpoint_resumes_under_torchrun_rank_streams(tmp_path):
    """A single-process checkpoint continued by 2 ranks: rank 0 keeps its stream, rank 1
    starts one of its own (no two ranks draw the same patches)."""
    run = tmp_path / "run"
    config = TrainConfig(
        data=str(DSB_DIR), dims=2, patch=(32, 32), steps=2, batch=2, channels=(8, 16)
    )
    train(config, run)
    state = read_checkpoint(run)
    rank0 = _rank_generator_state(state, distributed.Ranks(0, 2, 0), 0, 2)
    rank1 = _rank_generator_state(state, distributed.Ranks(1, 2, 1), 0, 2)
    assert torch.equal(rank0, state["generator"])
    assert not torch.equal(rank0, rank1)
    assert distributed.rank_seed(0, 0) == 0 and distributed.rank_seed(0, 1) != 0
