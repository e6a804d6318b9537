"""Noise schedules as pure functions of T (Nichol & Dhariwal 2021; paper names)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_T = 1000
COSINE_S = 0.008
MAX_BETA = 0.999


@dataclass(frozen=True)
class Schedule:
    """beta_t, alpha_t = 1 - beta_t and alpha_bar_t = prod alpha_s for t = 1..T at index t-1."""

    betas: np.ndarray  # float64, (T,)

    @property
    def T(self) -> int:  # noqa: N802 - the paper's name
        return len(self.betas)

    @property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.betas

    @property
    def alpha_bar(self) -> np.ndarray:
        return np.cumprod(self.alphas)

    def alpha_bar_at(self, t: int) -> float:
        """alpha_bar for t in 0..T; alpha_bar_0 = 1 (no noise)."""
        return 1.0 if t == 0 else float(self.alpha_bar[t - 1])


def cosine_alpha_bar(t: np.ndarray, T: int, s: float = COSINE_S) -> np.ndarray:  # noqa: N803
    """alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)."""

    def f(u: np.ndarray) -> np.ndarray:
        return np.cos(((u / T) + s) / (1 + s) * math.pi / 2) ** 2

    return f(np.asarray(t, dtype=np.float64)) / f(np.zeros(1))


def cosine_schedule(  # noqa: N803 - T is the paper's name
    T: int = DEFAULT_T,
    s: float = COSINE_S,
    max_beta: float = MAX_BETA,  # noqa: N803
) -> Schedule:
    """beta_t = 1 - alpha_bar(t) / alpha_bar(t-1), clipped to <= max_beta."""
    t = np.arange(T + 1, dtype=np.float64)
    ab = cosine_alpha_bar(t, T, s)
    betas = np.clip(1.0 - ab[1:] / ab[:-1], 0.0, max_beta)
    return Schedule(betas=betas)


def linear_schedule(T: int = DEFAULT_T, beta_1: float = 1e-4, beta_T: float = 0.02) -> Schedule:  # noqa: N803
    """Ho et al. 2020's linear schedule (for comparison)."""
    return Schedule(betas=np.linspace(beta_1, beta_T, T, dtype=np.float64))


def make_schedule(name: str, T: int = DEFAULT_T) -> Schedule:  # noqa: N803
    if name == "cosine":
        return cosine_schedule(T)
    if name == "linear":
        return linear_schedule(T)
    raise ValueError(f"unknown schedule {name!r}; valid: cosine, linear")
