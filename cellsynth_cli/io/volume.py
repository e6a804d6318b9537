"""One volume in memory: the `Volume`, where it lives on disk, and the checks every volume
passes before it is written or after it is read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellsynth_cli.errors import InputError

NGFF_VERSION = "0.5"
TIFF_SUFFIXES = (".tif", ".tiff")
MASKS_SUFFIX = "_masks"
LABEL_NAME = "cells"
SIMULATE_STAGE = "simulate"


@dataclass
class Volume:
    """One image volume with its optional instance masks, sketch, voxel size and provenance."""

    name: str
    image: np.ndarray | None = None
    masks: np.ndarray | None = None
    sketch: np.ndarray | None = None
    voxel_size: tuple[float, ...] | None = None
    provenance: dict = field(default_factory=dict)

    def _first_array(self) -> np.ndarray:
        for array in (self.image, self.sketch, self.masks):
            if array is not None:
                return array
        raise InputError(f"volume {self.name!r} holds no image, sketch or masks")

    @property
    def ndim(self) -> int:
        return self._first_array().ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._first_array().shape)


def volume_path(directory: Path, name: str) -> Path:
    """Where the volume NAME lives in an output directory."""
    return Path(directory) / f"{name}.zarr"


def volume_name(path: Path) -> str:
    """The volume name a path stands for: `a/x.zarr`, `a/x.tif` -> `x`."""
    path = Path(path)
    if path.suffix.lower() in (".zarr", *TIFF_SUFFIXES):
        return path.stem
    return path.name


def check_volume(volume: Volume, where: str) -> None:
    """Refuse shapes, dtypes and values that would make a broken or misleading volume."""
    arrays = {
        k: a
        for k, a in (("image", volume.image), ("sketch", volume.sketch), ("masks", volume.masks))
        if a is not None
    }
    if not arrays:
        raise InputError(f"{where}: volume has no image, sketch or masks")
    shapes = {k: tuple(a.shape) for k, a in arrays.items()}
    for key, array in arrays.items():
        if array.ndim not in (2, 3):
            raise InputError(
                f"{where}: {key} must be 2D (y,x) or 3D (z,y,x), got shape {shapes[key]}"
            )
        if 0 in array.shape:
            raise InputError(f"{where}: {key} is empty, shape {shapes[key]}")
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise InputError(f"{where}: arrays differ in shape: {listed}")
    for key in ("image", "sketch"):
        array = arrays.get(key)
        if array is None:
            continue
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise InputError(f"{where}: {key} has non-numeric dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            raise InputError(f"{where}: {key} contains NaN or infinite values")
    masks = arrays.get("masks")
    if masks is not None:
        if not np.issubdtype(masks.dtype, np.integer):
            raise InputError(f"{where}: masks must have an integer dtype, got {masks.dtype}")
        if masks.min() < 0:
            raise InputError(f"{where}: masks contain negative labels (min {masks.min()})")
        if int(masks.max()) > np.iinfo(np.uint32).max:
            raise InputError(f"{where}: masks hold labels beyond uint32 (max {masks.max()})")
    if volume.voxel_size is not None:
        ndim = next(iter(arrays.values())).ndim
        vs = tuple(volume.voxel_size)
        if len(vs) != ndim or not all(math.isfinite(float(v)) and float(v) > 0 for v in vs):
            raise InputError(
                f"{where}: voxel_size {vs} must hold {ndim} positive numbers, one per axis"
            )
