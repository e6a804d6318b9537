"""Intensity scaling shared by every stage: robust percentiles, [0, 1] and the model's [-1, 1].

Real images are mapped with the (low, high) percentiles of the training data; the same pair
travels in a model's checkpoint so later stages scale identically.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from cellsynth_cli.defaults import SEED
from cellsynth_cli.errors import InputError

LOW_PERCENTILE = 1.0  # background level
HIGH_PERCENTILE = 99.8  # bright nuclei, ignoring a few hot pixels
MAX_SAMPLES = 2_000_000  # percentiles from a random subsample of big data sets


def robust_range(
    images: Iterable[np.ndarray],
    low: float = LOW_PERCENTILE,
    high: float = HIGH_PERCENTILE,
    seed: int = SEED,
) -> tuple[float, float]:
    """(low, high) percentiles over all images together (subsampled when huge)."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(a).ravel() for a in images]
    if not arrays:
        raise InputError("no images to compute intensity statistics from")
    total = sum(a.size for a in arrays)
    parts = []
    for a in arrays:
        take = max(1, int(MAX_SAMPLES * a.size / total))
        parts.append(a if a.size <= take else rng.choice(a, take, replace=False))
    values = np.concatenate(parts).astype(np.float64)
    if not np.isfinite(values).all():
        raise InputError("images contain NaN or infinite values")
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        hi = lo + 1.0  # a constant image: avoid dividing by zero, keep it at the bottom
    return float(lo), float(hi)


def to_unit(image: np.ndarray, lo: float, hi: float, clip: bool = True) -> np.ndarray:
    """Map [lo, hi] to [0, 1] (float32)."""
    out = (np.asarray(image, dtype=np.float32) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0) if clip else out


def from_unit(unit: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.asarray(unit, dtype=np.float32) * (hi - lo) + lo


def unit_to_model(unit: np.ndarray) -> np.ndarray:
    """[0, 1] -> the model's [-1, 1]."""
    return np.asarray(unit, dtype=np.float32) * 2.0 - 1.0


def model_to_unit(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32) + 1.0) / 2.0
