"""Pseudo-sketches: sketches of real, unannotated images, for training a conditional DDPM.

The nuclei of the image are segmented with classical tools (detect.segment_nuclei: local
threshold, distance-transform seeds, watershed; anisotropy-aware) and each region is filled
with its mean intensity, exactly as `simulate from-labels` does with real annotations. No
human label is used: a pair (image, pseudo-sketch) teaches the network how a sketch of this
kind of data turns into a real-looking image.
"""

from __future__ import annotations

import numpy as np

from cellsynth_cli.errors import InputError
from cellsynth_cli.io.intensity import to_unit
from cellsynth_cli.measure.detect import segment_nuclei
from cellsynth_cli.simulate.sketch_from_labels import sketch_from_labels


def pseudo_sketch(
    image: np.ndarray,
    low: float,
    high: float,
    voxel_size: tuple[float, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(sketch in [0, 1] on the range low..high, instance labels) of one real image."""
    labels = segment_nuclei(to_unit(image, low, high), voxel_size, threshold="local")
    if not labels.any():
        raise InputError(f"no nuclei found for a pseudo-sketch of an image of shape {image.shape}")
    sketch, _ = sketch_from_labels(image, labels, low, high)
    return sketch, labels
