"""Nuclei as (rotated, deformed) ellipsoids in a foreground region: celegans, hela, mouse-stem.

Paper rules (docs/method.md, Presets):
((x-xc)/(sx r))^2 + ((y-yc)/(sy r))^2 + ((z-zc)/(sz r))^2 <= 1, random rotation, optional
B-spline deformation, a random brightness per nucleus, optional dark nucleoli; cells either
overlap (a new cell only fills free voxels) or are rejected when they would touch an
existing one. Without overlap, a share of the cells (touching_fraction) is put right against
an existing one: real nuclei cluster, and a segmenter that never saw touching pairs in
training merges them.
"""

from __future__ import annotations

import numpy as np

from cellsynth_cli.simulate.config import SimulationConfig
from cellsynth_cli.simulate.shapes import Ellipsoid, random_rotation, rasterise
from cellsynth_cli.simulate.simulators import Simulated

# a cell that keeps less than this fraction of its voxels (hidden by others) is dropped,
# so every instance in the masks is clearly visible in the sketch
MIN_VISIBLE_FRACTION = 0.3
# voxels between the support planes of two touching cells: rasterised, they end up adjacent
TOUCH_MARGIN = 0.5


def foreground_region(config: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    """Boolean map of where nucleus centres may lie."""
    shape = config.shape
    if config.region == "full":
        return np.ones(shape, dtype=bool)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    if config.region == "ellipsoid":
        # an embryo: an axis-aligned ellipsoid filling most of the image, centred
        frac = rng.uniform(*config.region_size)
        inside = np.zeros(shape, dtype=np.float32)
        for g, s in zip(grids, shape, strict=True):
            half = max(s / 2.0, 1.0)
            inside = inside + ((g - (s - 1) / 2.0) / (frac * half)) ** 2
        return inside <= 1.0
    # discs: union of random overlapping discs (HeLa colonies), in every z slice if 3D
    n = int(rng.integers(config.n_discs[0], config.n_discs[1] + 1))
    plane = shape[-2:]
    yy, xx = np.ogrid[: plane[0], : plane[1]]
    region = np.zeros(plane, dtype=bool)
    for _ in range(max(n, 1)):
        r = rng.uniform(*config.disc_radius) * min(plane)
        cy, cx = rng.uniform(0, plane[0]), rng.uniform(0, plane[1])
        region |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    return np.broadcast_to(region, shape).copy()


def _cell_geometry(
    config: SimulationConfig,
    rng: np.random.Generator,
    centre: np.ndarray,
    radius: float,
    elongated: bool,
) -> Ellipsoid:
    ndim = len(config.shape)
    sx, sy = rng.uniform(*config.scale_x), rng.uniform(*config.scale_y)
    if ndim == 3:
        semi = np.array([rng.uniform(*config.scale_z), sy, sx]) * radius
    else:
        semi = np.array([sy, sx]) * radius
    if elongated:
        # after mitosis: stretch one axis, shrink the others to keep the volume
        e = rng.uniform(*config.elongation)
        semi[-1] *= e
        semi[:-1] /= e ** (1.0 / (ndim - 1))
    rotation = None
    if config.rotate and ndim == 3 and config.rotate_in_plane_only:
        rotation = np.eye(3)
        rotation[1:, 1:] = random_rotation(rng, 2)  # about z: (y, x) turn, z stays z
    elif config.rotate:
        rotation = random_rotation(rng, ndim)
    scale = np.ones(ndim)
    scale[0] = config.anisotropy if ndim == 3 else 1.0
    return Ellipsoid.build(centre, semi, rotation, scale)


def _against(new: Ellipsoid, neighbour: Ellipsoid, rng: np.random.Generator) -> Ellipsoid:
    """`new` moved to touch `neighbour` from a random direction u (in-plane for 3D volumes).

    The centres are put h_n(u) + h_new(u) apart along u, h(u) = |T^T u| being an ellipsoid's
    support function (its extent along u): the plane between them then separates the two, so
    they meet without overlapping, up to the deformation (a clash is rejected as usual).
    """
    ndim = len(new.centre)
    u = np.zeros(ndim)
    u[-2:] = rng.normal(size=2)  # in-plane: stacks are coarse in z, pairs lie side by side
    u /= max(float(np.linalg.norm(u)), 1e-12)
    gap = np.linalg.norm(neighbour.transform.T @ u) + np.linalg.norm(new.transform.T @ u)
    return Ellipsoid(neighbour.centre + (gap + TOUCH_MARGIN) * u, new.transform)


def _in_region(centre: np.ndarray, region: np.ndarray) -> bool:
    index = np.round(centre).astype(int)
    if np.any(index < 0) or np.any(index >= region.shape):
        return False
    return bool(region[tuple(index)])


def _paint_nucleoli(
    config: SimulationConfig,
    rng: np.random.Generator,
    sketch: np.ndarray,
    masks: np.ndarray,
    label: int,
    ell: Ellipsoid,
    radius: float,
    brightness: float,
) -> int:
    """Dark nucleoli inside one nucleus; returns how many were painted."""
    n = int(rng.integers(config.nucleoli[0], config.nucleoli[1] + 1))
    painted = 0
    for _ in range(n):
        r = rng.uniform(*config.nucleolus_radius) * radius
        # a random point well inside the nucleus (within 0.6 of its unit ball)
        unit = rng.normal(size=len(ell.centre))
        unit *= rng.uniform(0, 0.6) / np.linalg.norm(unit)
        centre = ell.centre + ell.transform @ unit
        small = Ellipsoid.build(centre, np.full(len(centre), r))
        hit = rasterise(small, sketch.shape)
        if hit is None:
            continue
        nbox, inside = hit
        inside &= masks[nbox] == label  # only voxels of this nucleus
        sketch[nbox][inside] = brightness * config.nucleolus_intensity
        painted += int(inside.any())
    return painted


def simulate_nuclei(config: SimulationConfig, rng: np.random.Generator) -> Simulated:
    shape = tuple(config.shape)
    region = foreground_region(config, rng)
    candidates = np.flatnonzero(region)
    n_target = int(rng.integers(config.n_cells[0], config.n_cells[1] + 1))
    radius_factor = 1.0
    if config.radius_reference_count > 0:
        # more cells in the same embryo -> smaller cells (r ~ count^(-1/3))
        radius_factor = (config.radius_reference_count / max(n_target, 1)) ** (1.0 / 3.0)

    masks = np.zeros(shape, dtype=np.uint32)
    sketch = np.zeros(shape, dtype=np.float32)
    radii, elongated_flags, nucleoli = [], [], 0
    placed: list[Ellipsoid] = []
    label = 0
    tries = 0
    max_tries = n_target * (config.placement_tries if not config.overlap else 2)
    while label < n_target and tries < max_tries and candidates.size:
        tries += 1
        centre = np.array(np.unravel_index(rng.choice(candidates), shape), dtype=float)
        centre += rng.uniform(-0.5, 0.5, size=len(shape))
        radius = rng.uniform(*config.radius) * radius_factor
        elongated = bool(rng.random() < config.elongated_fraction)
        ell = _cell_geometry(config, rng, centre, radius, elongated)
        # drawn only when asked for, so presets without it keep their random sequence
        if placed and config.touching_fraction > 0 and rng.random() < config.touching_fraction:
            ell = _against(ell, placed[int(rng.integers(len(placed)))], rng)
            if not _in_region(ell.centre, region):
                continue
        hit = rasterise(ell, shape, rng, config.deform_strength * radius, config.deform_grid)
        if hit is None:
            continue
        box, cell = hit
        taken = masks[box] > 0
        if not config.overlap:
            if (cell & taken).any():
                continue
        else:
            full = int(cell.sum())
            cell = cell & ~taken
            if cell.sum() < MIN_VISIBLE_FRACTION * full:
                continue
        label += 1
        brightness = rng.uniform(*config.intensity)
        masks[box][cell] = label
        sketch[box][cell] = brightness
        radii.append(radius)
        placed.append(ell)
        elongated_flags.append(elongated)
        if config.nucleoli[1] > 0:
            nucleoli += _paint_nucleoli(config, rng, sketch, masks, label, ell, radius, brightness)

    info = {
        "n_cells": label,
        "n_requested": n_target,
        "radius_min": float(min(radii)) if radii else 0.0,
        "radius_max": float(max(radii)) if radii else 0.0,
        "n_elongated": int(sum(elongated_flags)),
        "n_nucleoli": nucleoli,
    }
    return Simulated(sketch=sketch, masks=masks, info=info)
