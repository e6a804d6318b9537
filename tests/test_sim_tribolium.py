"""T. castaneum simulator: nuclei on a sphere, equirectangular projection onto a shell of radii."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cellsynth_cli.simulate.config import load_preset, replace
from cellsynth_cli.simulate.simulators import Simulated
from cellsynth_cli.simulate.simulators.tribolium import simulate_tribolium

SHAPE = (13, 170, 245)


def _config(**changes):
    return replace(load_preset("tribolium"), {"shape": SHAPE, **changes}, "test")


@pytest.fixture(scope="module")
def sim() -> Simulated:
    return simulate_tribolium(_config(), np.random.default_rng(7))


def _to_cartesian(idx: np.ndarray, rho: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Projected voxel indices (n, 3) -> 3D points on the shell of radii `rho`."""
    _, height, width = shape
    theta = (idx[:, 1] + 0.5) * np.pi / height
    phi = (idx[:, 2] + 0.5) * 2 * np.pi / width
    r = rho[idx[:, 0]]
    return np.stack(
        [r * np.sin(theta) * np.cos(phi), r * np.sin(theta) * np.sin(phi), r * np.cos(theta)],
        axis=1,
    )


def _shell(sim: Simulated) -> np.ndarray:
    lo, hi = sim.info["shell_radii"]
    return np.linspace(lo, hi, SHAPE[0])


def test_shapes_dtypes_and_consecutive_labels(sim):
    assert sim.masks.shape == SHAPE and sim.masks.dtype == np.uint32
    assert sim.sketch.shape == SHAPE and sim.sketch.dtype == np.float32
    n = sim.info["n_cells"]
    assert np.array_equal(np.unique(sim.masks), np.arange(n + 1))


def test_sphere_radius_from_width_and_shell_around_it(sim):
    r = SHAPE[2] / (2 * np.pi)
    assert sim.info["sphere_radius"] == pytest.approx(r, abs=1e-3)
    # 13 radii, one voxel apart, centred on the sphere surface (R-6 .. R+6)
    assert sim.info["shell_radii"] == pytest.approx([r - 6, r + 6], abs=1e-3)
    forced = simulate_tribolium(_config(sphere_radius=30.0), np.random.default_rng(0))
    assert forced.info["sphere_radius"] == 30.0


def test_nuclei_sit_in_the_shell_around_the_surface(sim):
    masks = sim.masks
    per_slice = (masks > 0).mean(axis=(1, 2))
    mid = SHAPE[0] // 2
    # the densest slices are those through the sphere surface; the outermost radii (R +- 6)
    # only catch the rims of nuclei whose centres are jittered outwards
    assert per_slice.argmax() in (mid - 1, mid, mid + 1)
    assert per_slice[0] < 0.1 * per_slice[mid] and per_slice[-1] < 0.1 * per_slice[mid]
    # every nucleus crosses the sphere surface itself (|jitter| < r)
    labels_mid = np.unique(masks[mid])
    assert len(labels_mid) - 1 == sim.info["n_cells"]


def test_count_and_size_in_range(sim):
    cfg = _config()
    area = 4 * np.pi * sim.info["sphere_radius"] ** 2
    expected = cfg.nuclei_density * area
    assert 0.9 * expected <= sim.info["n_cells"] <= 1.05 * expected
    rho = _shell(sim)
    r_lo, r_hi = cfg.radius
    idx = np.argwhere(sim.masks > 0)
    labels = sim.masks[tuple(idx.T)]
    order = np.argsort(labels, kind="stable")
    idx, labels = idx[order], labels[order]
    splits = np.flatnonzero(np.diff(labels)) + 1
    for group in np.split(idx, splits):
        # back in 3D, every nucleus is a ball of radius r in (5, 6), at most trimmed a little
        # by a neighbour or the outermost radius: all voxels lie within ~r of its centroid
        points = _to_cartesian(group, rho, SHAPE)
        reach = np.linalg.norm(points - points.mean(axis=0), axis=1).max()
        assert r_lo - 1.5 <= reach <= r_hi + 1.5


def test_sketch_is_constant_brightness_per_nucleus(sim):
    masks, sketch = sim.masks, sim.sketch
    assert np.array_equal(sketch > 0, masks > 0)
    lo, hi = _config().intensity
    labels = np.arange(1, sim.info["n_cells"] + 1)
    vmin = ndimage.minimum(sketch, masks, labels)
    vmax = ndimage.maximum(sketch, masks, labels)
    assert np.array_equal(vmin, vmax)
    assert vmin.min() >= lo - 1e-6 and vmax.max() <= hi + 1e-6
    assert sketch.min() >= 0.0 and sketch.max() <= 1.0


def _columns(mask: np.ndarray) -> int:
    return int(mask.any(axis=(0, 1)).sum())


def test_poles_are_stretched_along_x(sim):
    masks = sim.masks
    mid = SHAPE[0] // 2
    height = SHAPE[1]
    objects = ndimage.find_objects(masks)
    theta_c, spans = [], []
    for label, box in enumerate(objects, start=1):
        rows = np.nonzero((masks[(slice(None), box[1], slice(None))] == label).any(axis=(0, 2)))
        theta_c.append((box[1].start + rows[0].mean() + 0.5) * np.pi / height)
        spans.append(_columns(masks[mid : mid + 1] == label))
    theta_c, spans = np.array(theta_c), np.array(spans)
    sin_t = np.sin(theta_c)
    equator = spans[sin_t > 0.95]
    polar = spans[(sin_t < 0.5) & (sin_t > 0.25)]
    assert len(equator) >= 3 and len(polar) >= 1
    # equirectangular: x extent grows like 1 / sin(theta)
    assert np.median(polar) > 1.6 * np.median(equator)


def _largest_gap_roll(cols: np.ndarray, width: int) -> int:
    """Shift that puts the largest circular gap of the occupied columns at the image seam."""
    occupied = np.flatnonzero(cols)
    if len(occupied) == width:
        return 0
    gaps = np.diff(np.concatenate([occupied, [occupied[0] + width]]))
    k = int(np.argmax(gaps))
    return -int(occupied[(k + 1) % len(occupied)])


def test_wrap_around_keeps_nuclei_whole(sim):
    masks = sim.masks
    width = SHAPE[2]
    # away from the poles (where caps span every column anyway), nuclei whose azimuth range
    # crosses phi = 0 must show on both image edges, in the same rows, with the same label
    band = np.sin((np.arange(SHAPE[1]) + 0.5) * np.pi / SHAPE[1]) > 0.5
    left, right = masks[:, band, 0], masks[:, band, -1]
    seam = np.unique(left[(left > 0) & (left == right)])
    assert len(seam) >= 2, "expected nuclei across the x = 0 / x = W-1 seam"
    for label in seam:
        nucleus = masks == label
        cols = nucleus.any(axis=(0, 1))
        # occupies both image edges, its columns are one circular run, and once rolled away
        # from the seam it is a single connected blob
        assert cols[0] and cols[-1]
        rolled = np.roll(nucleus, _largest_gap_roll(cols, width), axis=2)
        run = np.flatnonzero(rolled.any(axis=(0, 1)))
        assert run[-1] - run[0] + 1 == len(run)
        assert ndimage.label(rolled)[1] == 1
    # a nucleus never appears as two pieces: every label is one blob with periodic x
    for label in range(1, sim.info["n_cells"] + 1):
        nucleus = masks == label
        rolled = np.roll(nucleus, _largest_gap_roll(nucleus.any(axis=(0, 1)), width), axis=2)
        assert ndimage.label(rolled)[1] == 1


def test_same_seed_same_volume_other_seed_differs():
    cfg = _config()
    a = simulate_tribolium(cfg, np.random.default_rng(3))
    b = simulate_tribolium(cfg, np.random.default_rng(3))
    c = simulate_tribolium(cfg, np.random.default_rng(4))
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.sketch, b.sketch)
    assert a.info == b.info
    assert not np.array_equal(a.masks, c.masks)


def test_rejects_2d_shape():
    from cellsynth_cli.errors import InputError

    flat = replace(load_preset("tribolium"), {"shape": (170, 245), "voxel_size": (1, 1)}, "test")
    with pytest.raises(InputError):
        simulate_tribolium(flat, np.random.default_rng(0))
