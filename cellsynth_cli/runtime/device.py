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
