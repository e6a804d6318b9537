"""A. thaliana shoot apical meristem: a dome tessellated into cells, sketched as membranes.

Paper rules (docs/method.md, Presets): a dome-shaped meristem filled with cells (a Voronoi-like
tessellation of seeds that are denser near the surface); the sketch shows the membranes, whose
signal declines linearly from the surface towards the organism centre.

The paper derives dome shapes from a statistical shape model of real annotations; we have none,
so the dome here is PARAMETRIC: the upper half of an axis-aligned ellipsoid whose centre sits on
the first z slice, with the tip pointing towards +z:

    (z / a_z)^2 + ((y - y_c) / a_y)^2 + ((x - x_c) / a_x)^2 <= 1,  z >= 0.

The base plane z = 0 is a cut through the stem, not a surface: it gets no membrane and does not
count for the depth. Depth = Euclidean distance to the curved surface, normalised by its maximum
(the smallest semi-axis, reached at the base centre); signal = 1 at the surface, `centre_signal`
at depth 1, linear in between.

Cells: every dome voxel takes the label of its nearest seed (cKDTree, k = 2, in z slabs).
Membranes are the voxels within membrane_thickness / 2 of the bisector plane between the nearest
and the second-nearest seed, within membrane_thickness of the dome surface, and, so that no two
cells ever touch without a membrane voxel between them, every voxel whose lower neighbour (along
z, y or x) has another label or lies outside the dome.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from cellsynth_cli.errors import InputError
from cellsynth_cli.simulate.config import SimulationConfig
from cellsynth_cli.simulate.simulators import Simulated

# the image size of the paper's data: n_seeds means cells in a dome of this stack
REFERENCE_SHAPE = (221, 495, 511)
SLAB_VOXELS = 2_000_000  # voxels per slab of the tessellation (bounds the temporary memory)
COARSE_VOXELS = 1_000_000  # grid size of the coarse distance transform used for the depth
MAX_ROUNDS = 60  # rounds of batched seed placement


class _Dome:
    """The half-ellipsoid and the distance of points to its curved surface."""

    def __init__(self, semi: np.ndarray, centre: np.ndarray) -> None:
        self.semi = semi  # (a_z, a_y, a_x)
        self.centre = centre  # (0, y_c, x_c): the centre of the base
        self.max_depth = float(semi.min())  # inscribed ball of an ellipsoid: smallest semi-axis
        # coarse Euclidean distance transform of the FULL ellipsoid (mirrored below the base, so
        # the base plane is interior), interpolated at full resolution
        step = max(1.0, (8.0 * float(np.prod(semi)) / COARSE_VOXELS) ** (1.0 / 3.0))
        half = np.ceil(semi / step).astype(int) + 2
        axes = [np.arange(-h, h + 1) * step for h in half]
        grid = np.ix_(*axes)
        inside = sum((g / a) ** 2 for g, a in zip(grid, semi, strict=True)) <= 1.0
        self.step, self.half = step, half
        # EDT measures to the nearest outside sample; the surface lies ~half a step before it
        self.coarse = (ndimage.distance_transform_edt(inside) * step - step / 2).astype(np.float32)

    def q2(self, rel: np.ndarray) -> np.ndarray:
        """Squared ellipsoidal radius of points (n, 3) relative to the centre: <= 1 inside."""
        return ((rel / self.semi) ** 2).sum(axis=1)

    def depth(self, rel: np.ndarray) -> np.ndarray:
        """Distance (voxels) of inside points (n, 3) to the curved surface."""
        coords = (rel / self.step + self.half).T
        coarse = ndimage.map_coordinates(self.coarse, coords, order=1, mode="nearest")
        return np.clip(np.minimum(coarse, self.surface_distance(rel)), 0.0, None)

    def surface_distance(self, rel: np.ndarray) -> np.ndarray:
        """First-order distance to the surface, -f / |grad f| with f = q^2 - 1.

        Exact at the surface, an over-estimate deeper inside (hence the min with the coarse
        transform in `depth`).
        """
        grad = 2.0 * np.sqrt(((rel / self.semi**2) ** 2).sum(axis=1))
        return (1.0 - self.q2(rel)) / np.maximum(grad, 1e-12)

    def inside_grid(self, zs: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Boolean (len zs, len ys, len xs): inside the ellipsoid (the base cut is ignored)."""
        a_z, a_y, a_x = self.semi
        q = (
            ((zs - self.centre[0]) / a_z)[:, None, None] ** 2
            + ((ys - self.centre[1]) / a_y)[None, :, None] ** 2
            + ((xs - self.centre[2]) / a_x)[None, None, :] ** 2
        )
        return q <= 1.0


def _uniform_in_dome(rng: np.random.Generator, dome: _Dome, m: int) -> np.ndarray:
    """m points (absolute voxel coordinates) uniform in the half-ellipsoid."""
    u = rng.normal(size=(m, 3))
    u *= (rng.uniform(size=m) ** (1.0 / 3.0) / np.linalg.norm(u, axis=1))[:, None]
    u[:, 0] = np.abs(u[:, 0])  # upper half: z >= 0
    return u * dome.semi + dome.centre


def _place_seeds(
    config: SimulationConfig, rng: np.random.Generator, dome: _Dome, n: int
) -> np.ndarray:
    """n seeds, density falling linearly from `surface_density` (surface) to 1 (centre).

    A hard core keeps seeds at least g = seed_spacing x the local mean spacing apart, and g / 4
    inside the surface (more would make the outer cells large again), so cells are reasonably
    regular and none is a thin sliver.
    """
    s = max(config.surface_density, 1e-6)

    def rel_density(t: np.ndarray) -> np.ndarray:
        return s * (1.0 - t) + t

    probe = _uniform_in_dome(rng, dome, 20000)
    t_probe = np.clip(dome.depth(probe - dome.centre) / dome.max_depth, 0.0, 1.0)
    volume = 2.0 / 3.0 * np.pi * float(np.prod(dome.semi))
    # absolute seed density = n * rel / integral(rel dV); local mean spacing = density^(-1/3)
    norm = n / (volume * float(rel_density(t_probe).mean()))

    def spacing(t: np.ndarray) -> np.ndarray:
        return (norm * rel_density(t)) ** (-1.0 / 3.0)

    hard = max(config.seed_spacing, 0.0)
    reach = max(hard * float(spacing(np.array([0.0, 1.0])).max()), 1e-6)
    seeds = np.empty((0, 3))
    gaps = np.empty(0)  # hard-core distance of every accepted seed
    for _ in range(MAX_ROUNDS):
        need = n - len(seeds)
        if need <= 0:
            break
        m = max(3 * need, 64)
        p = _uniform_in_dome(rng, dome, m)
        depth = dome.depth(p - dome.centre)
        t = np.clip(depth / dome.max_depth, 0.0, 1.0)
        keep = rng.uniform(0.0, max(s, 1.0), m) <= rel_density(t)  # thinning
        g = hard * spacing(t)
        keep &= depth >= 0.25 * g
        p, g = p[keep], g[keep]
        ok = np.ones(len(p), dtype=bool)
        tree = cKDTree(p)
        if len(seeds) and hard > 0:
            near = cKDTree(seeds).sparse_distance_matrix(tree, reach, output_type="ndarray")
            clash = near["v"] < 0.5 * (gaps[near["i"]] + g[near["j"]])
            ok[near["j"][clash]] = False
        if hard > 0:
            pairs = tree.query_pairs(reach, output_type="ndarray")
            if len(pairs):
                a, b = pairs[:, 0], pairs[:, 1]
                dist = np.linalg.norm(p[a] - p[b], axis=1)
                clash = (dist < 0.5 * (g[a] + g[b])) & ok[a] & ok[b]
                ok[np.maximum(a, b)[clash]] = False  # the later one of each clash goes
        take = np.flatnonzero(ok)[:need]
        seeds = np.concatenate([seeds, p[take]])
        gaps = np.concatenate([gaps, g[take]])
    return seeds


def _tessellate(
    config: SimulationConfig,
    dome: _Dome,
    seeds: np.ndarray,
    seed_ids: np.ndarray,
    masks: np.ndarray,
    sketch: np.ndarray,
    box: tuple[slice, slice, slice],
) -> None:
    """Label every dome voxel of `box` by its nearest seed and paint its membranes.

    `seed_ids` maps tree indices to labels. Reads the lower neighbours just outside `box` from
    `masks` (already final when boxes are processed in z order).
    """
    zs, ys, xs = (np.arange(b.start, b.stop) for b in box)
    inside = dome.inside_grid(zs, ys, xs) & (zs >= 0)[:, None, None]
    lab = np.zeros(inside.shape, dtype=np.uint32)
    memb = np.zeros(inside.shape, dtype=bool)
    idx = np.nonzero(inside)
    if len(idx[0]):
        pts = np.stack([zs[idx[0]], ys[idx[1]], xs[idx[2]]], axis=1).astype(np.float64)
        dist, near = cKDTree(seeds).query(pts, k=2, workers=-1)
        if len(seeds) > 1:
            # distance to the bisector plane between the nearest and the second-nearest seed
            sep = np.linalg.norm(seeds[near[:, 0]] - seeds[near[:, 1]], axis=1)
            bisector = (dist[:, 1] ** 2 - dist[:, 0] ** 2) / (2.0 * np.maximum(sep, 1e-9))
            band = bisector <= config.membrane_thickness / 2.0
        else:
            band = np.zeros(len(pts), dtype=bool)
        # |grad q| <= 1 / a_min, so only points with q >= 1 - d / a_min can be within d of the
        # surface: evaluate the distance on that outer rind only
        rel = pts - dome.centre
        d_max = config.membrane_thickness
        rind = np.flatnonzero(dome.q2(rel) >= max(1.0 - (d_max + 1.0) / dome.max_depth, 0.0) ** 2)
        band[rind] |= dome.surface_distance(rel[rind]) <= d_max
        lab[idx] = seed_ids[near[:, 0]]
        memb[idx] = band
    masks[box] = lab

    # one-sided voxel rule: a voxel whose lower neighbour has another label is membrane
    z0, y0, x0 = (b.start for b in box)
    lower = [
        (0, masks[z0 - 1 : z0, box[1], box[2]] if z0 > 0 else lab[:1]),
        (1, masks[box[0], y0 - 1 : y0, box[2]] if y0 > 0 else lab[:, :1]),
        (2, masks[box[0], box[1], x0 - 1 : x0] if x0 > 0 else lab[:, :, :1]),
    ]
    for axis, before in lower:
        prev = np.concatenate([before, np.delete(lab, -1, axis=axis)], axis=axis)
        memb |= (lab != prev) & (lab > 0) & (prev > 0)
    # the dome surface: an inside voxel with a 6-neighbour outside the ellipsoid (the image
    # border and the base plane are no surface, hence the analytic test on a padded grid)
    pad = dome.inside_grid(
        np.arange(zs[0] - 1, zs[-1] + 2),
        np.arange(ys[0] - 1, ys[-1] + 2),
        np.arange(xs[0] - 1, xs[-1] + 2),
    )
    pad[: max(1 - zs[0], 0)] = True  # below the base: stem, not outside
    core = (slice(1, -1),) * 3
    all_in = np.ones(inside.shape, dtype=bool)
    for axis in range(3):
        for shift in (0, 2):
            sl = list(core)
            sl[axis] = slice(shift, shift + inside.shape[axis])
            all_in &= pad[tuple(sl)]
    memb |= inside & ~all_in

    shade = np.zeros(inside.shape, dtype=np.float32)
    midx = np.nonzero(memb)
    if len(midx[0]):
        rel = np.stack([zs[midx[0]], ys[midx[1]], xs[midx[2]]], axis=1) - dome.centre
        t = np.clip(dome.depth(rel) / dome.max_depth, 0.0, 1.0)
        # linear decline: 1.0 at the surface, centre_signal at the organism centre
        shade[midx] = 1.0 - (1.0 - config.centre_signal) * t
    sketch[box] = shade


def simulate_arabidopsis(config: SimulationConfig, rng: np.random.Generator) -> Simulated:
    if len(config.shape) != 3:
        raise InputError(f"arabidopsis needs a 3D shape (z, y, x), got {config.shape}")
    for name in ("dome_height", "dome_width"):
        lo, hi = getattr(config, name)
        if not 0 < lo <= hi:
            raise InputError(f"arabidopsis: '{name}' must be 0 < lo <= hi, got {(lo, hi)}")
    if config.membrane_thickness <= 0 or not 0 <= config.centre_signal <= 1:
        raise InputError("arabidopsis: membrane_thickness must be > 0, centre_signal in [0, 1]")
    shape = config.shape
    n_z, n_y, n_x = shape
    h, w = rng.uniform(*config.dome_height), rng.uniform(*config.dome_width)
    semi = np.array([h * n_z, w * n_y / 2.0, w * n_x / 2.0])
    dome = _Dome(semi, np.array([0.0, (n_y - 1) / 2.0, (n_x - 1) / 2.0]))

    # seed count scales with the dome volume relative to a mean dome of the paper's stack
    ref_h, ref_w = np.mean(config.dome_height), np.mean(config.dome_width)
    ref_volume = ref_h * REFERENCE_SHAPE[0] * ref_w**2 * REFERENCE_SHAPE[1] * REFERENCE_SHAPE[2] / 4
    n = max(int(round(config.n_seeds * float(np.prod(semi)) / ref_volume)), 1)
    seeds = _place_seeds(config, rng, dome, n)
    if not len(seeds):  # a dome too small for the hard core: one cell
        seeds = (dome.centre + [semi[0] / 2.0, 0.0, 0.0])[None, :]
    ids = np.arange(1, len(seeds) + 1, dtype=np.uint32)

    masks = np.zeros(shape, dtype=np.uint32)
    sketch = np.zeros(shape, dtype=np.float32)
    top = min(n_z, int(math.ceil(semi[0])) + 1)  # nothing above the dome tip
    slab = max(1, SLAB_VOXELS // (n_y * n_x))
    volumes = np.zeros(len(seeds) + 1, dtype=np.int64)
    for z0 in range(0, top, slab):
        box = (slice(z0, min(z0 + slab, top)), slice(0, n_y), slice(0, n_x))
        _tessellate(config, dome, seeds, ids, masks, sketch, box)
        volumes += np.bincount(masks[box].ravel(), minlength=len(seeds) + 1)

    # drop tiny cells (cut off by the image border or the base): their voxels go to the next
    # seed, re-tessellating only a margin around each of them with the remaining seeds
    cell_vol = volumes[1:]
    median = float(np.median(cell_vol[cell_vol > 0])) if (cell_vol > 0).any() else 0.0
    tiny = np.flatnonzero(cell_vol < config.min_cell_fraction * median)
    keep = np.ones(len(seeds), dtype=bool)
    keep[tiny] = False
    if len(tiny) and keep.any():
        objects = ndimage.find_objects(masks[:top])
        margin = int(math.ceil(config.membrane_thickness)) + 2
        for i in tiny:
            found = objects[i] if i < len(objects) else None
            if found is None:  # no voxel: clean up around the seed itself
                c = np.round(seeds[i]).astype(int)
                found = tuple(slice(int(v), int(v) + 1) for v in c)
            region = tuple(
                slice(max(s.start - margin, 0), min(s.stop + margin, size))
                for s, size in zip(found, (top, n_y, n_x), strict=True)
            )
            if any(r.stop <= r.start for r in region):
                continue
            _tessellate(config, dome, seeds[keep], ids[keep], masks, sketch, region)

    # consecutive labels 1..n over the surviving cells
    present = np.zeros(len(seeds) + 1, dtype=bool)
    for z0 in range(0, top, slab):
        present |= np.bincount(masks[z0 : z0 + slab].ravel(), minlength=len(seeds) + 1) > 0
    present[0] = False
    lut = np.zeros(len(seeds) + 1, dtype=np.uint32)
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.uint32)
    for z0 in range(0, top, slab):
        masks[z0 : z0 + slab] = lut[masks[z0 : z0 + slab]]

    info = {
        "n_cells": int(present.sum()),
        "n_seeds": int(len(seeds)),
        "n_dropped": int(len(seeds) - present.sum()),
        "dome": "half-ellipsoid on z = 0, tip towards +z (parametric, no shape model)",
        "dome_semi_axes_zyx": [float(v) for v in semi],
        "max_depth": round(dome.max_depth, 2),
    }
    return Simulated(sketch=sketch, masks=masks, info=info)
