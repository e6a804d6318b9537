"""What a DDPM training run is: the one place its defaults are written.

torch-free, so the CLI reads its option defaults from here at start-up; a run's checkpoint
and config.json carry this record, so later stages need no repeated flags.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cellsynth_cli.defaults import DEVICE, SEED

DEFAULT_PATCH = {2: (256, 256), 3: (32, 128, 128)}


@dataclass(frozen=True)
class TrainConfig:
    data: str
    dims: int
    patch: tuple[int, ...]
    steps: int = 10_000
    batch: int = 4
    lr: float = 2e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    warmup: int = 100  # linear learning-rate warm-up steps
    seed: int = SEED
    schedule: str = "cosine"
    T: int = 1000  # noqa: N815 - the paper's name
    checkpoint_every: int = 500
    channels: tuple[int, ...] | None = None  # None: the UNet's defaults for `dims`
    device: str = DEVICE
    condition: str = "none"  # "pseudo-sketch" / "label-sketch": on sketches (conditioning.py)
    condition_dropout: float = 0.1  # classifier-free guidance: P(sketch replaced by null)
    init: str | None = None  # a model whose weights start the run (fine-tuning); None: random

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
