"""2D training slices of 2D images and 3D volumes (Cellpose trains a 2D network).

3D data trains on its xy slices and on xz / yz slices resampled along z to isotropic voxels:
Cellpose's recipe for 3D, whose 3D mode runs the 2D network on the YX, ZY and ZX planes of the
isotropic volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellsynth_cli import io
from cellsynth_cli.errors import InputError, check_choice

SLICES = ("all", "xy")  # 3D training: xy + xz + yz slices, or xy slices only

# provenance key of a volume whose image is already normalised like its source image
NORMALISED = "normalised_like_source"
# provenance key: labels of a volume's masks that are neither cell nor background to
# training (a pseudo-label crop's unconfident cells); their pixels get no loss
IGNORED = "ignored_labels"


def median_diameter(masks: list[np.ndarray]) -> float:
    """Median equivalent-circle diameter of the instances of 2D masks."""
    sizes = np.concatenate([np.bincount(m.ravel())[1:] for m in masks])
    sizes = sizes[sizes > 0]
    if sizes.size == 0:
        raise InputError("training masks are empty (no labelled cell)")
    return float(2 * np.sqrt(np.median(sizes) / np.pi))


def z_anisotropy(voxel_size: tuple[float, ...] | None) -> float:
    """z step over x step of a 3D voxel size (Cellpose's `anisotropy`); 1 when unknown or 2D."""
    if voxel_size is None or len(voxel_size) != 3:
        return 1.0
    return float(voxel_size[0] / voxel_size[-1])


def volume_slices(
    image: np.ndarray, masks: np.ndarray, anisotropy: float = 1.0, orthogonal: bool = True
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """2D training slices of a 3D volume as (plane, image, masks), only those with cells.

    plane is "xy", "xz" or "yz". The xz and yz slices (shape (z, x) and (z, y)) are resampled
    along z by `anisotropy` so their pixels are square, as Cellpose's 3D mode sees them:
    images linearly, masks by nearest neighbour so labels stay labels. There are at most as
    many xz + yz slices as xy slices, evenly spaced: each is a resampled copy, and a big stack
    would otherwise multiply its memory.
    """
    slices = [("xy", im, m) for im, m in zip(image, masks, strict=True) if m.any()]
    if not orthogonal or image.shape[0] * anisotropy < 2:  # under 2 rows: no extent in z
        return slices
    has_cells = masks.any(axis=0)  # (y, x): which xz rows and yz columns cross a cell
    candidates = [("xz", int(y)) for y in np.flatnonzero(has_cells.any(axis=1))] + [
        ("yz", int(x)) for x in np.flatnonzero(has_cells.any(axis=0))
    ]
    if len(candidates) > len(slices):
        # evenly spaced over xz then yz, so both kinds and all positions are represented;
        # the spacing is >= 1, so no index repeats
        keep = np.linspace(0, len(candidates) - 1, len(slices)).round().astype(int)
        candidates = [candidates[i] for i in keep]
    for plane, i in candidates:
        if plane == "xz":
            im, m = image[:, i, :], masks[:, i, :]
        else:
            im, m = image[:, :, i], masks[:, :, i]
        if anisotropy != 1.0:
            # grid_mode: pixels as areas (as cellpose's own resize at prediction), so z plane
            # k covers rows [k * anisotropy, (k + 1) * anisotropy) and the pixels come out square
            factor = (anisotropy, 1)
            im = ndimage.zoom(
                im.astype(np.float32), factor, order=1, grid_mode=True, mode="nearest"
            )
            m = ndimage.zoom(m, factor, order=0, grid_mode=True, mode="nearest")
        if m.any():  # a z step finer than x shrinks z, which can drop a thin cell
            slices.append((plane, im, m))
    return slices


@dataclass
class TrainingSlices:
    """2D training images with their masks and the plane each was cut along."""

    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    planes: list[str] = field(default_factory=list)  # "xy" (also 2D images), "xz", "yz"
    # already scaled as Cellpose scales its source image (pseudo-label crops): kept as is
    normalised: list[bool] = field(default_factory=list)
    # per image, its pixels that train nothing (None: none); their masks there are 0
    ignored: list[np.ndarray | None] = field(default_factory=list)
    dims: int = 0

    def has_ignored_pixels(self) -> bool:
        return any(ignored is not None for ignored in self.ignored)

    def counts(self) -> dict[str, int]:
        return {plane: self.planes.count(plane) for plane in ("xy", "xz", "yz")}

    def xy_masks(self) -> list[np.ndarray]:
        return [m for m, plane in zip(self.masks, self.planes, strict=True) if plane == "xy"]


def training_slices(data: Path, slices: str = "all") -> TrainingSlices:
    """2D (image, masks) pairs: 2D volumes as they are, 3D volumes cut by volume_slices.

    slices: "all" (xy, xz and yz slices of 3D volumes) or "xy" (xy slices only).
    """
    check_choice(slices, SLICES, "--slices")
    found = TrainingSlices()
    for volume in io.read_volumes(data):
        if volume.image is None or volume.masks is None:
            raise InputError(f"{data}/{volume.name}: needs an image and masks to train on")
        found.dims = volume.image.ndim
        if found.dims == 2:
            pairs = [("xy", volume.image, volume.masks)]
        else:
            anisotropy = z_anisotropy(volume.voxel_size)
            pairs = volume_slices(volume.image, volume.masks, anisotropy, slices == "all")
        ignored_labels = volume.provenance.get(IGNORED, [])
        for plane, im, m in pairs:
            ignored = np.isin(m, ignored_labels)
            if ignored.any():
                m = np.where(ignored, 0, m)
            found.images.append(im.astype(np.float32))
            found.masks.append(m.astype(np.int32))
            found.planes.append(plane)
            found.normalised.append(bool(volume.provenance.get(NORMALISED)))
            found.ignored.append(ignored if ignored.any() else None)
    if not found.images:
        raise InputError(f"{data}: no image with masks to train on")
    return found
