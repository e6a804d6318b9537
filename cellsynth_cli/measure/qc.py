"""Label-free quality control of one synthetic image: does the classical segmenter find the
cells of its own masks, and nothing else?"""

from __future__ import annotations

import numpy as np

from cellsynth_cli.errors import InputError
from cellsynth_cli.measure.detect import segment_nuclei
from cellsynth_cli.measure.matching import match_counts


def phantom_vanished(
    image: np.ndarray, masks: np.ndarray, voxel_size: tuple[float, ...] | None = None
) -> dict:
    """Phantom and vanished shares of one synthetic image against its own masks, judged by
    the classical segmenter (no trained model, no real labels): cells it finds with no
    mask partner at IoU 0.5, and masks it finds no cell for (matching.match_counts)."""
    ids, counts = np.unique(masks[masks > 0], return_counts=True)
    if ids.size == 0:
        raise InputError("QC needs masks with at least one cell")
    # the sketch's own cell size (equal-volume radius in in-plane voxels) sets the window
    if masks.ndim == 2:
        radius = float(np.median(np.sqrt(counts / np.pi)))
    else:
        vs = np.asarray(voxel_size if voxel_size else (1.0, 1.0, 1.0), dtype=float)
        size = counts * float(np.prod(vs / vs[-1]))
        radius = float(np.median((size * (3.0 / (4.0 * np.pi))) ** (1 / 3)))
    lo, hi = np.percentile(image, [1.0, 99.8])
    unit = np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    found = segment_nuclei(unit, voxel_size, threshold="local", radius=radius)
    return match_counts(found, masks)
