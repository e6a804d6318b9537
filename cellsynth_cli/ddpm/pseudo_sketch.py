"""Pseudo-sketches: sketches of real, unannotated images, for training a conditional DDPM.

The nuclei of the images are found as `simulate fit` finds them (measure.detect: one
detector chosen for the whole set, each nucleus its half-maximum region, dim nuclei beside
bright ones included, large ones found on the image shrunk) and each region is filled with
its mean intensity, exactly as `simulate from-labels` does with real annotations. No human
label is used: a pair (image, pseudo-sketch) teaches the network how a sketch of this kind
of data turns into a real-looking image, and the nuclei it is taught on are the ones the
fit simulates (a dim nucleus left out of the sketches would be learned as background).
"""

from __future__ import annotations

import numpy as np

from cellsynth_cli.errors import InputError
from cellsynth_cli.io.intensity import to_unit
from cellsynth_cli.measure.detect import choose_detector, nucleus_regions
from cellsynth_cli.simulate.sketch_from_labels import sketch_from_labels


def pseudo_sketches(
    images: list[np.ndarray],
    low: float,
    high: float,
    voxel_size: tuple[float, ...] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(sketch in [0, 1] on the range low..high, instance labels) of each real image."""
    units = [to_unit(image, low, high) for image in images]
    detector, passes = choose_detector(units, [voxel_size] * len(units))
    out = []
    for image, unit, first in zip(images, units, passes, strict=True):
        labels, _ = nucleus_regions(first, detector.method, unit.shape)
        if not labels.any():
            raise InputError(
                f"no nuclei found for a pseudo-sketch of an image of shape {image.shape}"
            )
        sketch, _ = sketch_from_labels(image, labels, low, high)
        out.append((sketch, labels))
    return out
