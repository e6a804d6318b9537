"""Simulators: each a function (config, rng) -> Simulated, registered by `config.simulator`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cellsynth_cli.errors import InputError
from cellsynth_cli.simulate.config import SimulationConfig


@dataclass
class Simulated:
    """One simulated volume: a sketch in [0, 1] (background 0) and its instance masks."""

    sketch: np.ndarray  # float32, shape = config.shape
    masks: np.ndarray  # uint32 instance labels 1..n, 0 = background
    info: dict = field(default_factory=dict)  # JSON-able facts (cell count, ...) for provenance


Simulator = Callable[[SimulationConfig, np.random.Generator], Simulated]


def get_simulator(name: str) -> Simulator:
    # imported here so each simulator module stays independent of the others
    from cellsynth_cli.simulate.simulators import arabidopsis, nuclei, tribolium

    table: dict[str, Simulator] = {
        "nuclei": nuclei.simulate_nuclei,
        "tribolium": tribolium.simulate_tribolium,
        "arabidopsis": arabidopsis.simulate_arabidopsis,
    }
    if name not in table:
        raise InputError(f"unknown simulator {name!r}; valid: {', '.join(sorted(table))}")
    return table[name]
