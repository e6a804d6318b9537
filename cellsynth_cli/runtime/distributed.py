"""Training under torchrun: one process per device, DistributedDataParallel, rank 0 writes.

torchrun (or any launcher that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) starts
`cellsynth train` N times; every process trains on its own patch stream and DDP averages the
gradients. Outside torchrun this is one process of rank 0 and nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cellsynth_cli.errors import InputError


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env() -> Ranks:
    """The ranks torchrun set for this process (rank 0 of 1 without torchrun)."""
    try:
        return Ranks(
            rank=int(os.environ.get("RANK", 0)),
            world=int(os.environ.get("WORLD_SIZE", 1)),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError:
        raise InputError(
            "RANK / WORLD_SIZE / LOCAL_RANK must be integers (set by torchrun)"
        ) from None


def setup(device: torch.device) -> tuple[Ranks, torch.device]:
    """Join the process group (gloo on CPU, nccl on CUDA); each rank gets its own GPU."""
    ranks = from_env()
    if not ranks.active:
        return ranks, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks, device


def shutdown(wait: bool = True) -> None:
    """Leave the process group; WAIT for the other ranks first (a rank that tore gloo down
    while rank 0 was still saving aborted now and then: "terminate called without an active
    exception", 1 run in 7 of the torchrun test on a loaded 2-core machine). An interrupted
    rank does not wait: the others may be gone."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def broadcast(value: Any, ranks: Ranks) -> Any:
    """Rank 0's VALUE on every rank (e.g. the run directory it chose)."""
    if not ranks.active:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, ranks: Ranks) -> list[Any]:
    """Every rank's VALUE, in rank order, on every rank."""
    if not ranks.active:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * ranks.world
    dist.all_gather_object(values, value)
    return values


def mean(value: torch.Tensor, ranks: Ranks) -> float:
    """The mean of a scalar tensor over the ranks (the logged loss is the global batch's)."""
    if not ranks.active:
        return float(value.detach())
    import torch.distributed as dist

    total = value.detach().float().reshape(1).clone()
    dist.all_reduce(total)
    return float(total) / ranks.world


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """True on every rank when FLAG is true on any (all ranks stop at the same step)."""
    if not ranks.active:
        return flag
    import torch.distributed as dist

    box = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(box, op=dist.ReduceOp.MAX)
    return bool(box.item())


def rank_seed(seed: int, rank: int) -> int:
    """Rank 0 keeps the run's seed (a single process is rank 0); others derive their own."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def wrap(model: torch.nn.Module, ranks: Ranks, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around MODEL under torchrun, MODEL itself otherwise."""
    if not ranks.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
