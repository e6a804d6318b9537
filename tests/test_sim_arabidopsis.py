"""A. thaliana simulator: a parametric dome tessellated into cells, membranes fading with depth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from cellsynth_cli.simulate.config import load_preset, replace
from cellsynth_cli.simulate.simulators import Simulated
from cellsynth_cli.simulate.simulators.arabidopsis import simulate_arabidopsis

SHAPE = (48, 96, 96)
# n_seeds counts cells at the paper's stack size; ~160 cells in this small dome
N_SEEDS = 20000


def _config(**changes):
    base = {"shape": SHAPE, "n_seeds": N_SEEDS}
    return replace(load_preset("arabidopsis"), {**base, **changes}, "test")


@pytest.fixture(scope="module")
def sim() -> Simulated:
    return simulate_arabidopsis(_config(), np.random.default_rng(11))


def _dome(sim: Simulated, shape=SHAPE) -> np.ndarray:
    """The half-ellipsoid from the recorded semi-axes: centre on z = 0, tip towards +z."""
    a_z, a_y, a_x = sim.info["dome_semi_axes_zyx"]
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    yc, xc = (shape[1] - 1) / 2, (shape[2] - 1) / 2
    q = (z / a_z) ** 2 + ((y - yc) / a_y) ** 2 + ((x - xc) / a_x) ** 2
    return q <= 1.0 + 1e-6


def _depth(dome: np.ndarray) -> np.ndarray:
    """Euclidean distance to the curved surface; the base (z = 0) is mirrored, not a surface."""
    mirrored = np.concatenate([dome[::-1], dome], axis=0)
    mirrored = np.pad(mirrored, 1)
    return ndimage.distance_transform_edt(mirrored)[1 + dome.shape[0] : -1, 1:-1, 1:-1]


def test_shapes_dtypes_and_consecutive_labels(sim):
    assert sim.masks.shape == SHAPE and sim.masks.dtype == np.uint32
    assert sim.sketch.shape == SHAPE and sim.sketch.dtype == np.float32
    n = sim.info["n_cells"]
    assert 100 <= n <= 250
    assert np.array_equal(np.unique(sim.masks), np.arange(n + 1))
    assert sim.sketch.min() >= 0.0 and sim.sketch.max() <= 1.0


def test_masks_tessellate_the_dome(sim):
    dome = _dome(sim)
    assert np.all(sim.masks[dome] > 0), "a dome voxel without a cell"
    assert np.all(sim.masks[~dome] == 0), "a cell outside the dome"
    assert np.all(sim.sketch[~dome] == 0)
    # the tip points towards +z: the dome narrows slice by slice
    area = dome.sum(axis=(1, 2))
    assert area[0] > 0 and np.all(np.diff(area) <= 0)


def test_cells_are_compact_and_not_tiny(sim):
    masks = sim.masks
    labels = np.arange(1, sim.info["n_cells"] + 1)
    volume = np.bincount(masks.ravel())[1:]
    assert volume.min() >= _config().min_cell_fraction * np.median(volume)
    # nearest-seed cells are convex pieces: one (26-connected) component each
    full = np.ones((3, 3, 3), dtype=bool)
    for label, box in zip(labels, ndimage.find_objects(masks), strict=True):
        assert ndimage.label(masks[box] == label, structure=full)[1] == 1


def test_every_cell_has_membrane(sim):
    membrane = sim.sketch > 0
    per_cell = np.bincount(sim.masks[membrane], minlength=sim.info["n_cells"] + 1)[1:]
    assert per_cell.min() > 0
    # membranes separate cells: across every face between two cells, one side is membrane
    m = sim.masks
    for axis in range(3):
        a = np.delete(m, -1, axis=axis)
        b = np.delete(m, 0, axis=axis)
        ma = np.delete(membrane, -1, axis=axis)
        mb = np.delete(membrane, 0, axis=axis)
        face = (a != b) & (a > 0) & (b > 0)
        assert np.all(ma[face] | mb[face])
    # and the dome surface is outlined: dome voxels next to the outside are membrane
    dome = m > 0
    outer = dome & ~ndimage.binary_erosion(dome, border_value=1)
    outer[0] = False  # the base is a cut through the stem, not a surface
    assert membrane[outer].mean() > 0.99


def test_membrane_signal_declines_linearly_with_depth(sim):
    cfg = _config()
    depth = _depth(sim.masks > 0)
    membrane = sim.sketch > 0
    d = depth[membrane] / sim.info["max_depth"]
    s = sim.sketch[membrane]
    outer = s[d < 0.1].mean()
    inner = s[d > 0.6].mean()
    assert outer > inner + 0.3
    assert np.corrcoef(d, s)[0, 1] < -0.95
    # a line: 1.0 at the surface, centre_signal at the centre
    slope, offset = np.polyfit(d, s, 1)
    assert offset == pytest.approx(1.0, abs=0.05)
    assert offset + slope == pytest.approx(cfg.centre_signal, abs=0.08)


def _outer_inner_volume_ratio(sim: Simulated) -> float:
    masks = sim.masks
    depth = _depth(masks > 0) / sim.info["max_depth"]
    counts = np.bincount(masks.ravel())[1:]
    mean_depth = np.bincount(masks.ravel(), weights=depth.ravel())[1:] / counts
    return float(np.median(counts[mean_depth < 0.3]) / np.median(counts[mean_depth > 0.5]))


def test_cells_are_smaller_near_the_surface(sim):
    ratio = _outer_inner_volume_ratio(sim)
    assert ratio < 0.95
    # and it is the seed density that makes them small: with an even density they are not
    even = simulate_arabidopsis(_config(surface_density=1.0), np.random.default_rng(11))
    assert ratio < 0.85 * _outer_inner_volume_ratio(even)


def test_dome_wider_than_the_image_drops_cut_cells():
    cfg = _config(dome_width=(1.3, 1.3))
    sim = simulate_arabidopsis(cfg, np.random.default_rng(2))
    n = sim.info["n_cells"]
    assert np.array_equal(np.unique(sim.masks), np.arange(n + 1))
    assert np.all(sim.masks[_dome(sim)] > 0)
    volume = np.bincount(sim.masks.ravel())[1:]
    assert volume.min() >= cfg.min_cell_fraction * np.median(volume)
    # the image border is no surface: no membrane sheet along the cut
    border = sim.masks[:, :, 0] > 0
    assert (sim.sketch[:, :, 0][border] > 0).mean() < 0.6


def test_same_seed_same_volume_other_seed_differs():
    cfg = _config(shape=(32, 64, 64))
    a = simulate_arabidopsis(cfg, np.random.default_rng(5))
    b = simulate_arabidopsis(cfg, np.random.default_rng(5))
    c = simulate_arabidopsis(cfg, np.random.default_rng(6))
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.sketch, b.sketch)
    assert a.info == b.info
    assert not np.array_equal(a.masks, c.masks)
