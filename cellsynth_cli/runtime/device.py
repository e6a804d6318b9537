"""--device auto | cpu | cuda as a torch device (the one place that spelling is read)."""

from __future__ import annotations

import torch

from cellsynth_cli.errors import InputError


def pick_device(name: str) -> torch.device:
    """auto: CUDA when torch sees one, else the CPU; cuda without a GPU is bad input."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device available (torch sees none)")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def machine() -> dict:
    """What a result depends on besides its inputs and seed (docs/reproducibility.md): the
    versions, torch's CPU kernel set (AVX-512, AVX2 or plain x86-64 code) and its threads."""
    from cellsynth_cli import __version__

    return {
        "cellsynth": __version__,
        "torch": torch.__version__,
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def described(record: dict) -> str:
    """A machine() record in words, for reports: "cellsynth 0.2.0, torch 2.13.0+cpu, AVX512
    CPU kernels, 2 threads" (and the GPU where there was one)."""
    words = (
        f"cellsynth {record['cellsynth']}, torch {record['torch']}, "
        f"{record['cpu_kernels']} CPU kernels, {record['threads']} threads"
    )
    return words + (f", {record['gpu']}" if record["gpu"] else "")
