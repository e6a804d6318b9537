"""The nuclei presets (celegans, hela, mouse-stem) follow the paper's rules."""

import numpy as np
import pytest
from scipy import ndimage

from cellsynth_cli.errors import InputError
from cellsynth_cli.simulate.config import load_preset, replace
from cellsynth_cli.simulate.simulators.nuclei import simulate_nuclei


def small(name: str, **changes):
    return replace(load_preset(name), changes, "test")


def celegans_small():
    # a quarter-size embryo: radii scaled down with the image
    return small("celegans", shape=(35, 128, 177), radius=(7.0, 8.5), n_cells=(40, 80))


def test_masks_and_sketch_agree_and_every_cell_is_visible():
    for cfg in (
        celegans_small(),
        small("hela", shape=(175, 275), radius=(5, 8)),
        small("mouse-stem", shape=(256, 256), radius=(14, 20), n_cells=(10, 20)),
    ):
        sim = simulate_nuclei(cfg, np.random.default_rng(1))
        assert sim.sketch.shape == tuple(cfg.shape) and sim.masks.shape == tuple(cfg.shape)
        np.testing.assert_array_equal(sim.sketch > 0, sim.masks > 0)
        labels = np.unique(sim.masks)[1:]
        np.testing.assert_array_equal(labels, np.arange(1, sim.info["n_cells"] + 1))
        brightest = ndimage.maximum(sim.sketch, sim.masks, labels)
        lo, hi = cfg.intensity
        assert np.all(brightest >= lo) and np.all(brightest <= hi)


def test_counts_and_radii_in_range():
    cfg = celegans_small()
    for seed in range(3):
        sim = simulate_nuclei(cfg, np.random.default_rng(seed))
        n = sim.info["n_cells"]
        assert cfg.n_cells[0] <= n <= cfg.n_cells[1]
        # radius shrinks with the count: r = r0 * (reference / n)^(1/3)
        factor = (cfg.radius_reference_count / sim.info["n_requested"]) ** (1 / 3)
        assert cfg.radius[0] * factor - 1e-9 <= sim.info["radius_min"]
        assert sim.info["radius_max"] <= cfg.radius[1] * factor + 1e-9


def test_celegans_radius_shrinks_with_count():
    few = simulate_nuclei(
        replace(celegans_small(), {"n_cells": (30, 30)}, "t"), np.random.default_rng(0)
    )
    many = simulate_nuclei(
        replace(celegans_small(), {"n_cells": (120, 120)}, "t"), np.random.default_rng(0)
    )
    size_few = np.bincount(few.masks.ravel())[1:].mean()
    size_many = np.bincount(many.masks.ravel())[1:].mean()
    assert size_many < 0.5 * size_few  # r ~ n^(-1/3) -> volume ~ 1/n: 4x fewer voxels


def test_celegans_nuclei_are_flat_in_z_and_inside_the_embryo():
    cfg = celegans_small()
    sim = simulate_nuclei(cfg, np.random.default_rng(3))
    # anisotropy 0.09: a nucleus of radius ~8 px in x/y spans only a few z slices
    slices = ndimage.find_objects(sim.masks.astype(np.int32))
    z_extent = np.array([s[0].stop - s[0].start for s in slices])
    xy_extent = np.array([s[2].stop - s[2].start for s in slices])
    assert np.median(z_extent) <= 3 and np.median(xy_extent) >= 8
    # nothing in the image corners (outside the central ellipsoid)
    assert sim.masks[:, :10, :10].max() == 0 and sim.masks[:, -10:, -10:].max() == 0


def test_celegans_elongated_fraction_is_about_ten_percent():
    cfg = replace(celegans_small(), {"n_cells": (150, 150), "radius": (4.0, 5.0)}, "t")
    flags = total = 0
    for seed in range(6):
        sim = simulate_nuclei(cfg, np.random.default_rng(seed))
        flags += sim.info["n_elongated"]
        total += sim.info["n_cells"]
    fraction = flags / total
    sd = np.sqrt(0.1 * 0.9 / total)
    assert abs(fraction - 0.1) < 4 * sd, fraction


def test_elongated_cells_are_longer():
    base = dict(
        shape=(64, 64),
        n_cells=(1, 1),
        radius=(10.0, 10.0),
        rotate=False,
        scale_x=(1.0, 1.0),
        intensity=(1.0, 1.0),
    )
    round_ = simulate_nuclei(small("hela", **base, region="full"), np.random.default_rng(0))
    long_ = simulate_nuclei(
        small("hela", **base, region="full", elongated_fraction=1.0, elongation=(2.0, 2.0)),
        np.random.default_rng(0),
    )

    def extent(m):
        ys, xs = np.nonzero(m)
        return xs.max() - xs.min(), ys.max() - ys.min()

    (rx, ry), (lx, ly) = extent(round_.masks), extent(long_.masks)
    assert lx > 1.5 * rx and ly < ry  # stretched along x, thinner across, about same area


def test_mouse_stem_no_overlaps_and_dark_nucleoli():
    cfg = small("mouse-stem", shape=(256, 256), radius=(14.0, 20.0), n_cells=(15, 25))
    sim = simulate_nuclei(cfg, np.random.default_rng(2))
    m = sim.masks
    # no two different cells touch (4-neighbourhood), i.e. none overlap
    for a, b in ((m[1:, :], m[:-1, :]), (m[:, 1:], m[:, :-1])):
        assert not np.any((a > 0) & (b > 0) & (a != b))
    assert sim.info["n_nucleoli"] > 0
    darker = 0
    for label in np.unique(m)[1:]:
        values = sim.sketch[m == label]
        body = values.max()
        dark = values[values < body]
        if dark.size:
            darker += 1
            np.testing.assert_allclose(dark, body * cfg.nucleolus_intensity, rtol=1e-5)
    assert darker >= sim.info["n_nucleoli"] * 0.5


def test_hela_cells_lie_in_the_disc_foreground():
    cfg = small(
        "hela",
        shape=(175, 275),
        radius=(5.0, 8.0),
        n_cells=(40, 60),
        n_discs=(1, 1),
        disc_radius=(0.3, 0.3),
    )
    sim = simulate_nuclei(cfg, np.random.default_rng(4))
    ys, xs = np.nonzero(sim.masks)
    # one disc of radius 0.3*175 = 52.5 px (+ nucleus radius): all cells near one centre
    cy, cx = ys.mean(), xs.mean()
    assert np.sqrt((ys - cy) ** 2 + (xs - cx) ** 2).max() < 2 * 52.5 + 2 * 8


@pytest.mark.parametrize("name", ["celegans", "hela", "mouse-stem"])
def test_same_seed_same_volume(name):
    cfg = {
        "celegans": celegans_small(),
        "hela": small("hela", shape=(100, 150), radius=(5, 8)),
        "mouse-stem": small("mouse-stem", shape=(128, 128), radius=(12, 16), n_cells=(5, 10)),
    }[name]
    a = simulate_nuclei(cfg, np.random.default_rng(7))
    b = simulate_nuclei(cfg, np.random.default_rng(7))
    c = simulate_nuclei(cfg, np.random.default_rng(8))
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_array_equal(a.sketch, b.sketch)
    assert not np.array_equal(a.masks, c.masks)


def test_in_plane_rotation_keeps_flat_nuclei_flat():
    """Nuclei with z semi-axis half the in-plane ones, rotated about z only: every nucleus
    keeps its z extent (a 3D rotation would stand some on their edge)."""
    from cellsynth_cli.simulate.simulators import get_simulator

    config = replace(
        load_preset("nuclei"),
        {
            "shape": [40, 96, 96],
            "voxel_size": [1, 1, 1],
            "radius": [10, 10],
            "scale_x": [1, 1],
            "scale_z": [0.5, 0.5],
            "n_cells": [6, 6],
            "deform_strength": 0.0,
            "rotate_in_plane_only": True,
        },
        source="test",
    )
    made = get_simulator("nuclei")(config, np.random.default_rng(0))
    for label in range(1, made.masks.max() + 1):
        z = np.nonzero(made.masks == label)[0]
        assert z.max() - z.min() + 1 <= 11  # 2 * 0.5 * 10 + 1 voxel


def _share_touching(masks: np.ndarray) -> float:
    """Share of cells with another cell within 2 voxels."""
    near = 0
    labels = np.unique(masks)[1:]
    for label in labels:
        cell = masks == label
        ring = ndimage.binary_dilation(cell, iterations=2) & ~cell
        near += bool(np.any((masks[ring] > 0) & (masks[ring] != label)))
    return near / len(labels)


def test_touching_fraction_puts_cells_against_each_other_without_overlap():
    def sims(touching: float) -> list:
        cfg = small("nuclei", shape=(256, 256), n_cells=(25, 30), touching_fraction=touching)
        return [simulate_nuclei(cfg, np.random.default_rng(seed)) for seed in range(3)]

    apart = np.mean([_share_touching(s.masks) for s in sims(0.0)])
    together = sims(0.6)
    assert np.mean([_share_touching(s.masks) for s in together]) > apart + 0.2
    for sim in together:
        # still one region per cell, none lost to overlap: touching cells stay separate
        n = sim.info["n_cells"]
        assert n >= 20
        _, pieces = ndimage.label(sim.masks > 0)
        assert pieces < n  # some cells merge into one foreground blob: they touch
        for label in range(1, n + 1):
            assert ndimage.label(sim.masks == label)[1] == 1


def test_touching_fraction_outside_zero_one_is_refused():
    with pytest.raises(InputError, match="touching_fraction"):
        small("nuclei", touching_fraction=1.5)
