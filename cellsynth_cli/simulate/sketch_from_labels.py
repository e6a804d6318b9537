"""Sketches from real annotations: each instance filled with the mean real intensity inside it.

Used by noise-analysis (real vs sketch of the same cells) and to evaluate synthetic images
against the real image they should reproduce. Values are in [0, 1] on the real data's robust
range (intensity.robust_range), background 0, like simulated sketches.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cellsynth_cli.errors import InputError
from cellsynth_cli.io.intensity import robust_range, to_unit


def sketch_from_labels(
    image: np.ndarray, masks: np.ndarray, lo: float | None = None, hi: float | None = None
) -> tuple[np.ndarray, dict]:
    """(sketch in [0, 1], info) for one real image and its instance masks."""
    if image.shape != masks.shape:
        raise InputError(f"image shape {image.shape} and masks shape {masks.shape} differ")
    if lo is None or hi is None:
        lo, hi = robust_range([image])
    ids = np.unique(masks)
    ids = ids[ids > 0]
    if ids.size == 0:
        raise InputError("masks are empty (no labelled instance)")
    unit = to_unit(image, lo, hi)
    means = ndimage.mean(unit, labels=masks, index=ids)
    lookup = np.zeros(int(ids.max()) + 1, dtype=np.float32)
    lookup[ids] = means
    sketch = lookup[masks]
    info = {"n_cells": int(ids.size), "intensity_low": lo, "intensity_high": hi}
    return sketch.astype(np.float32), info
