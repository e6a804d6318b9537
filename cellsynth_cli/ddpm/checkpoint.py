"""The self-describing DDPM checkpoint: weights, EMA, optimizer, step and the full config.

Everything in it is plain data (dicts, lists, numbers, strings, tensors), so it loads with
`torch.load(weights_only=True)` and rebuilds its own network: later stages need no flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cellsynth_cli.ddpm import bundled
from cellsynth_cli.errors import InputError
from cellsynth_cli.io import file_checksum

FORMAT = "cellsynth-ddpm"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_path(run: Path | str) -> Path:
    """RUN/checkpoint.pt for a run directory, or the file itself; bundled:NAME for a model
    that ships with the package (bundled.py)."""
    if bundled.is_bundled(run):
        run = bundled.resolve(run)
    run = Path(run)
    return run / CHECKPOINT_NAME if run.is_dir() else run


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a crash mid-write never leaves a half checkpoint behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(run: Path) -> dict[str, Any]:
    """Load and check a checkpoint; foreign or corrupt files raise InputError."""
    path = checkpoint_path(run)
    if not path.is_file():
        raise InputError(f"no checkpoint at {path} (train one with `cellsynth train`)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not a cellsynth DDPM checkpoint")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"{path}: written by a newer cellsynth (format {state['format_version']})")
    for key in ("config", "unet", "normalization", "ema", "step"):
        if key not in state:
            raise InputError(f"{path}: checkpoint lacks '{key}'")
    return state


@dataclass
class TrainedModel:
    """A network with its EMA weights, ready for sampling, and what it was trained on."""

    net: torch.nn.Module
    dims: int
    multiples: tuple[int, ...]  # every input size must be a multiple of these (per axis)
    normalization: dict[str, float]
    config: dict[str, Any]
    step: int
    checksum: str
    path: Path
    provenance: dict[str, Any] | None = None  # how a bundled model was made


def load_model(run: Path, device: torch.device | str = "cpu") -> TrainedModel:
    from cellsynth_cli.diffusion.unet import UNet, UNetConfig

    path = checkpoint_path(run)
    state = read_checkpoint(path)
    try:
        unet_config = UNetConfig.from_dict(state["unet"])
        net = UNet(unet_config)
        net.load_state_dict(state["ema"])
    except (TypeError, KeyError, RuntimeError, ValueError) as exc:
        raise InputError(f"{path}: network does not match its config ({exc})") from None
    net.to(device).eval()
    return TrainedModel(
        net=net,
        dims=unet_config.dims,
        multiples=net.multiples,
        normalization=dict(state["normalization"]),
        config=dict(state["config"]),
        step=int(state["step"]),
        checksum=file_checksum(path),
        path=path.resolve(),  # the run itself, not a link such as runs/latest
        provenance=state.get("provenance"),
    )
