"""T. castaneum: nuclei on a sphere, seen through a cartographic (equirectangular) projection.

Paper rules (docs/method.md, Presets): a sphere at the image centre, nuclei with r in (5, 6)
and scales (1, 1, 1) densely on its surface; then for a fixed set of radii around the sphere
radius
(one per z slice) the spherical shell is mapped to image coordinates:

    z = radius index,  y = polar angle theta in [0, pi] over the height,
    x = azimuth phi in [0, 2 pi) over the width (wraps around: x = 0 and x = W-1 are neighbours).

The map is equirectangular, so nuclei near the poles are stretched along x by 1 / sin(theta).
The sphere radius follows from the width (2 pi R = W: one voxel per x column at the equator)
unless `sphere_radius` is set.

Nothing is rasterised in 3D: every nucleus is a ball, and it is painted directly into the
projected (radius, theta, phi) grid inside its own small angular bounding box. A ball of
radius r whose centre lies at distance R_c from the origin is seen from the origin under a cone
of half-angle asin(r / R_c), which bounds its rows; its columns follow from the width of that
spherical cap, asin(sin(alpha) / sin(theta_c)), and wrap modulo W. Caps over a pole take all
columns. At the full (13, 1700, 2450) size this is a loop over ~9k nuclei, each a few thousand
voxels, instead of a 500^3 volume with index grids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from cellsynth_cli.errors import InputError
from cellsynth_cli.simulate.config import SimulationConfig
from cellsynth_cli.simulate.simulators import Simulated

# batched random sequential adsorption: each round proposes twice the missing nuclei; near
# saturation a round adds few, so the rounds are capped (the count actually placed is reported)
MAX_ROUNDS = 60


def _sphere_radius(config: SimulationConfig) -> float:
    """R from the config, or from the width: the equator (2 pi R) spans the x axis."""
    if config.sphere_radius > 0:
        return float(config.sphere_radius)
    return config.shape[2] / (2.0 * np.pi)


def _place_nuclei(
    config: SimulationConfig, rng: np.random.Generator, sphere_r: float, n_target: int
) -> tuple[np.ndarray, np.ndarray]:
    """Nucleus centres (n, 3) near the sphere surface and their radii (n,).

    Candidates are drawn from a smooth surface density field (a dipole: denser on one side of
    the egg, like the germ rudiment against the sparse serosa) and accepted when they keep a
    centre distance >= min_distance * (r1 + r2) to all accepted nuclei (cKDTree, batched).
    """
    r_lo, r_hi = config.radius
    md = config.min_distance
    reach = max(md * 2.0 * r_hi, 1e-6)  # largest distance at which two nuclei can clash
    variation = float(np.clip(config.density_variation, -1.0, 1.0))
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    centres = np.empty((0, 3))
    radii = np.empty(0)
    for _ in range(MAX_ROUNDS):
        need = n_target - len(centres)
        if need <= 0:
            break
        m = max(2 * need, 64)
        u = rng.normal(size=(m, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        # thinning: accept a uniform point with probability density(u) / max density
        keep = rng.uniform(0.0, 1.0 + abs(variation), m) <= 1.0 + variation * (u @ axis)
        u = u[keep]
        r = rng.uniform(r_lo, r_hi, len(u))
        rc = sphere_r + rng.uniform(-config.radial_jitter, config.radial_jitter, len(u))
        p = u * rc[:, None]
        ok = np.ones(len(p), dtype=bool)
        cand_tree = cKDTree(p)
        if len(centres):
            near = cKDTree(centres).sparse_distance_matrix(cand_tree, reach, output_type="ndarray")
            clash = near["v"] < md * (radii[near["i"]] + r[near["j"]])
            ok[near["j"][clash]] = False
        pairs = cand_tree.query_pairs(reach, output_type="ndarray")
        if len(pairs):
            a, b = pairs[:, 0], pairs[:, 1]
            dist = np.linalg.norm(p[a] - p[b], axis=1)
            clash = (dist < md * (r[a] + r[b])) & ok[a] & ok[b]
            # drop the later candidate of every clashing pair: conservative, never leaves a clash
            ok[np.maximum(a, b)[clash]] = False
        take = np.flatnonzero(ok)[:need]
        centres = np.concatenate([centres, p[take]])
        radii = np.concatenate([radii, r[take]])
    return centres, radii


def simulate_tribolium(config: SimulationConfig, rng: np.random.Generator) -> Simulated:
    if len(config.shape) != 3:
        raise InputError(f"tribolium needs a 3D shape (radii, theta, phi), got {config.shape}")
    n_r, height, width = config.shape
    sphere_r = _sphere_radius(config)
    # the shell of projected radii, one per z slice, centred on the sphere surface
    rho = sphere_r + (np.arange(n_r) - (n_r - 1) / 2.0) * config.shell_spacing
    if rho[0] <= 0:
        raise InputError(
            f"tribolium: sphere_radius {sphere_r:.1f} is too small for {n_r} radii spaced "
            f"{config.shell_spacing}"
        )
    area = 4.0 * np.pi * sphere_r**2
    n_target = int(round(config.nuclei_density * area))
    centres, radii = _place_nuclei(config, rng, sphere_r, n_target)
    brightness = rng.uniform(*config.intensity, len(centres)).astype(np.float32)

    grid = _Grid.of(rho, height, width)
    masks = np.zeros(config.shape, dtype=np.uint32)
    sketch = np.zeros(config.shape, dtype=np.float32)
    label = 0
    for centre, r, value in zip(centres, radii, brightness, strict=True):
        found = grid.ball(centre, r)
        if found is None:
            continue
        box, inside = found
        block = masks[box]
        new = inside & (block == 0)  # nuclei barely touch (min_distance); first come keeps
        if not new.any():
            continue
        label += 1
        block[new] = label
        masks[box] = block
        shade = sketch[box]
        shade[new] = value
        sketch[box] = shade

    info = {
        "n_cells": label,
        "n_placed": int(len(centres)),
        "n_target": n_target,
        "sphere_radius": round(float(sphere_r), 3),
        "shell_radii": [round(float(rho[0]), 3), round(float(rho[-1]), 3)],
        "projection": "equirectangular: z = radius, y = theta in [0, pi], x = phi in [0, 2 pi)",
    }
    return Simulated(sketch=sketch, masks=masks, info=info)


@dataclass(frozen=True)
class _Grid:
    """The projected image: radius rho per z slice, pixel-centre angles theta per row and phi
    per column (equirectangular)."""

    rho: np.ndarray
    sin_t: np.ndarray
    cos_t: np.ndarray
    sin_p: np.ndarray
    cos_p: np.ndarray
    height: int
    width: int

    @classmethod
    def of(cls, rho: np.ndarray, height: int, width: int) -> _Grid:
        theta = (np.arange(height) + 0.5) * np.pi / height
        phi = (np.arange(width) + 0.5) * 2.0 * np.pi / width
        return cls(rho, np.sin(theta), np.cos(theta), np.sin(phi), np.cos(phi), height, width)

    def ball(self, centre: np.ndarray, r: float) -> tuple[tuple, np.ndarray] | None:
        """The box of the image a ball (CENTRE, R) reaches and which of its pixels it covers;
        None when it reaches no projected radius or row."""
        rho, height = self.rho, self.height
        rc = float(np.linalg.norm(centre))
        # radii (z slices) the ball reaches
        k0 = int(np.searchsorted(rho, rc - r, side="left"))
        k1 = int(np.searchsorted(rho, rc + r, side="right"))
        if k1 <= k0:
            return None
        tc = float(np.arccos(np.clip(centre[2] / rc, -1.0, 1.0)))
        alpha = float(np.arcsin(min(r / rc, 1.0)))  # half-angle of the cone seen from the origin
        rows_per_rad = height / np.pi
        i0 = max(int(np.floor((tc - alpha) * rows_per_rad - 0.5)), 0)
        i1 = min(int(np.ceil((tc + alpha) * rows_per_rad - 0.5)), height - 1)
        if i1 < i0:
            return None
        cols = self._columns(centre, tc, alpha)
        cp, sp = self.cos_p[cols], self.sin_p[cols]
        st, ct = self.sin_t[i0 : i1 + 1, None], self.cos_t[i0 : i1 + 1, None]
        # cosine of the angle between each (theta, phi) direction and the centre direction
        u = centre / rc
        cos_g = st * (cp * u[0] + sp * u[1]) + ct * u[2]
        rr = rho[k0:k1, None, None]
        inside = rr**2 + rc**2 - 2.0 * rr * rc * cos_g[None] <= r**2
        return (slice(k0, k1), slice(i0, i1 + 1), cols), inside

    def _columns(self, centre: np.ndarray, tc: float, alpha: float) -> slice | np.ndarray:
        """The columns (phi) a spherical cap of half-angle ALPHA around theta TC reaches."""
        width = self.width
        if tc - alpha <= 0.0 or tc + alpha >= np.pi:  # over a pole: every column
            return slice(0, width)
        pc = float(np.arctan2(centre[1], centre[0]) % (2.0 * np.pi))
        cols_per_rad = width / (2.0 * np.pi)
        # half-width in phi of a spherical cap: widens as 1/sin(theta) towards the poles
        dphi = float(np.arcsin(min(np.sin(alpha) / np.sin(tc), 1.0)))
        j0 = int(np.floor((pc - dphi) * cols_per_rad - 0.5))
        j1 = int(np.ceil((pc + dphi) * cols_per_rad - 0.5))
        if j1 - j0 + 1 >= width:
            return slice(0, width)
        if j0 >= 0 and j1 < width:
            return slice(j0, j1 + 1)
        return np.arange(j0, j1 + 1) % width  # straddles the x = 0 / W-1 seam
