"""Ellipsoids and their rasterisation: random rotations, B-spline deformation, painting.

An ellipsoid is the image of the unit ball under p = c + T u, |u| <= 1, with
T = diag(axis_scale) @ R @ diag(semi_axes). `axis_scale` squeezes anisotropic axes after the
rotation (C. elegans stacks: z voxels are ~11x larger than x/y voxels), so cells rotate in
physical space. All work happens in the cell's bounding box, vectorised with numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation


def random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    """A uniformly random rotation matrix in (z, y, x) or (y, x) axis order."""
    if ndim == 2:
        a = rng.uniform(0, 2 * np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return Rotation.random(random_state=rng).as_matrix()


@dataclass(frozen=True)
class Ellipsoid:
    centre: np.ndarray  # (ndim,) voxel coordinates
    transform: np.ndarray  # (ndim, ndim) T: unit ball -> voxel space

    @classmethod
    def build(
        cls,
        centre: np.ndarray,
        semi_axes: np.ndarray,
        rotation: np.ndarray | None = None,
        axis_scale: np.ndarray | None = None,
    ) -> Ellipsoid:
        ndim = len(centre)
        rot = np.eye(ndim) if rotation is None else rotation
        scale = np.ones(ndim) if axis_scale is None else np.asarray(axis_scale, float)
        transform = np.diag(scale) @ rot @ np.diag(np.asarray(semi_axes, float))
        return cls(np.asarray(centre, float), transform)

    def half_extent(self) -> np.ndarray:
        """Half size of the axis-aligned bounding box along each axis."""
        return np.sqrt((self.transform**2).sum(axis=1))


def bounding_box(
    centre: np.ndarray, half: np.ndarray, shape: tuple[int, ...], pad: float = 0.0
) -> tuple[slice, ...] | None:
    """Slices of the box centre +- (half + pad) clipped to `shape`; None if it lies outside."""
    lo = np.floor(centre - half - pad).astype(int)
    hi = np.ceil(centre + half + pad).astype(int) + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))


def cubic_bspline(x: np.ndarray) -> np.ndarray:
    """The centred cubic B-spline kernel beta3."""
    a = np.abs(x)
    return np.where(
        a < 1, 2.0 / 3.0 - a**2 + a**3 / 2.0, np.where(a < 2, (2.0 - a) ** 3 / 6.0, 0.0)
    )


def bspline_basis(n: int, grid: int) -> np.ndarray:
    """(n, grid) weights of `grid` evenly spaced cubic B-spline control points at n samples."""
    spacing = max(n - 1, 1) / max(grid - 1, 1)
    x = np.arange(n)[:, None] / spacing - np.arange(grid)[None, :]
    return cubic_bspline(x).astype(np.float32)


def smooth_displacement(
    rng: np.random.Generator, box_shape: tuple[int, ...], grid: int, sigma: float
) -> np.ndarray:
    """A cubic B-spline random displacement field, shape (ndim, *box_shape).

    Random offsets (std `sigma` voxels) on `grid` control points per axis, evaluated as a
    separable tensor product of B-spline bases: a smooth elastic deformation, and a few
    small matrix products instead of a spline interpolation of the whole box.
    """
    ndim = len(box_shape)
    # B-spline weights sum to 2/3 at a control point: rescale so offsets keep std ~ sigma
    coarse = rng.normal(0.0, sigma * 1.5, size=(ndim,) + (grid,) * ndim).astype(np.float32)
    bases = [bspline_basis(n, grid) for n in box_shape]
    if ndim == 2:
        return np.einsum("ia,dab,jb->dij", bases[0], coarse, bases[1], optimize=True)
    return np.einsum("ia,jb,kc,dabc->dijk", *bases, coarse, optimize=True)


def rasterise(
    ellipsoid: Ellipsoid,
    shape: tuple[int, ...],
    rng: np.random.Generator | None = None,
    deform_sigma: float = 0.0,
    deform_grid: int = 4,
) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Voxels inside the (optionally B-spline deformed) ellipsoid, as (bbox slices, bool mask).

    Deformation displaces the sampling coordinates smoothly, which keeps the shape a single
    blob for moderate sigma. Returns None when the ellipsoid misses the image.
    """
    pad = 3.0 * deform_sigma if deform_sigma > 0 else 0.0
    box = bounding_box(ellipsoid.centre, ellipsoid.half_extent(), shape, pad)
    if box is None:
        return None
    box_shape = tuple(s.stop - s.start for s in box)
    coords = np.stack(
        np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float32) for s in box], indexing="ij")
    )
    if deform_sigma > 0:
        assert rng is not None, "deformation needs a random generator"
        coords += smooth_displacement(rng, box_shape, deform_grid, deform_sigma)
    offset = coords - ellipsoid.centre.reshape((-1,) + (1,) * len(shape)).astype(np.float32)
    inverse = np.linalg.inv(ellipsoid.transform).astype(np.float32)
    unit = np.tensordot(inverse, offset, axes=1)
    inside = (unit**2).sum(axis=0) <= 1.0
    if not inside.any():
        return None
    return box, inside
