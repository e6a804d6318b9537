"""Real background as empty training images for Cellpose, found without annotations.

A Cellpose trained on synthetic images has only ever seen synthetic background; on real
images it can outline background texture (the 2D study, docs/study_2d.md: up to 21 fragments on the
held-back half). Here the classical segmenter (detect.segment_nuclei, local threshold, as for
pseudo-sketches) marks the nuclei of unlabelled real images; squares that stay clear of every
detection by a margin are cut out and used as training images whose masks are empty.

Cellpose normalises each training image by its own 1-99 % percentiles, which would stretch a
crop of pure background to full contrast. A crop is therefore normalised by its whole source
image's percentiles, as Cellpose will normalise that image at prediction time
(`normalize99`), and training then runs on pre-normalised images (see segment.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellsynth_cli import io
from cellsynth_cli.defaults import SEED
from cellsynth_cli.errors import InputError
from cellsynth_cli.io.intensity import robust_range, to_unit
from cellsynth_cli.measure.detect import segment_nuclei

SIDE_PER_DIAMETER = 2.5  # crop side: room for a nucleus or two, so a real field of view
MARGIN_PER_DIAMETER = 0.25  # clearance from any detection: dim rims are not background


@dataclass(frozen=True)
class BackgroundCrop:
    """A nucleus-free square of a real image, normalised like Cellpose normalises its source."""

    image: np.ndarray  # 2D float32, 0 = source's 1st percentile, 1 = its 99th
    source: str  # volume name
    plane: int  # z index of a 3D source (0 for 2D)
    corner: tuple[int, int]  # (y, x) of the top-left pixel


def normalize_like_cellpose(image: np.ndarray) -> np.ndarray:
    """1st percentile -> 0, 99th -> 1, over the whole image (Cellpose's normalize99)."""
    from cellpose.transforms import normalize99

    return normalize99(np.asarray(image, dtype=np.float32), downsample=True)


def _free_squares(clearance: np.ndarray, side: int) -> np.ndarray:
    """Per top-left corner, the smallest clearance over the side x side square there."""
    smallest = ndimage.minimum_filter(clearance, size=side, mode="constant", cval=0.0)
    # minimum_filter centres its window: shift so index (y, x) is the square's corner
    offset = side // 2
    rows, cols = (n - side + 1 for n in clearance.shape)
    return smallest[offset : offset + rows, offset : offset + cols]


def background_crops(
    data: Path, diameter: float, n_crops: int, seed: int = SEED
) -> list[BackgroundCrop]:
    """Up to N_CROPS non-overlapping nucleus-free squares of DATA's images (2D, or the xy
    planes of 3D volumes), those farthest from any detected nucleus first.

    diameter: the cells' diameter in pixels (the training masks'); it sets the side of a
    square (SIDE_PER_DIAMETER x) and the clearance from any detection (MARGIN_PER_DIAMETER x).
    """
    if n_crops < 1:
        raise InputError(f"--background-crops must be >= 1, got {n_crops}")
    side = max(16, int(round(SIDE_PER_DIAMETER * diameter)))
    margin = MARGIN_PER_DIAMETER * diameter
    planes: list[tuple[str, int, np.ndarray, np.ndarray]] = []  # name, z, normalised, clearance
    for volume in io.read_volumes(data):
        if volume.image is None:
            raise InputError(f"{data}/{volume.name}: no intensity image for background crops")
        image = np.asarray(volume.image, dtype=np.float32)
        low, high = robust_range([image], seed=seed)
        nuclei = segment_nuclei(to_unit(image, low, high), volume.voxel_size, threshold="local")
        normalised = normalize_like_cellpose(image)
        stack = image.ndim == 3
        for z in range(image.shape[0]) if stack else [0]:
            plane_nuclei = nuclei[z] if stack else nuclei
            if min(plane_nuclei.shape) < side:
                continue
            clearance = (
                ndimage.distance_transform_edt(plane_nuclei == 0)
                if plane_nuclei.any()
                else np.full(plane_nuclei.shape, np.inf)  # (the transform needs a zero)
            )
            planes.append((volume.name, z, normalised[z] if stack else normalised, clearance))
    free = [_free_squares(clearance, side) for *_, clearance in planes]
    crops: list[BackgroundCrop] = []
    while len(crops) < n_crops and planes:
        index = int(np.argmax([f.max() for f in free]))
        y, x = (int(i) for i in np.unravel_index(int(np.argmax(free[index])), free[index].shape))
        if free[index][y, x] <= margin:
            break
        name, z, normalised, clearance = planes[index]
        crops.append(BackgroundCrop(normalised[y : y + side, x : x + side].copy(), name, z, (y, x)))
        clearance[y : y + side, x : x + side] = 0.0  # taken: no overlapping square
        free[index] = _free_squares(clearance, side)
    if not crops:
        raise InputError(
            f"{data}: no square of {side} px clear of nuclei by {margin:.0f} px in its images "
            "(background crops need sparser images, or leave out --background)"
        )
    return crops
