"""`simulate fit`: presets estimated from images alone match what made the images."""

import json
import tomllib

import numpy as np
import pytest
import tifffile
from conftest import DSB_DIR, REPO, dim_and_bright_nuclei, run, script_module
from scipy import ndimage

from cellsynth_cli import io
from cellsynth_cli.errors import InputError
from cellsynth_cli.simulate.config import load_preset, replace
from cellsynth_cli.simulate.fit import fit_nuclei
from cellsynth_cli.simulate.simulators import get_simulator


def microscope(sketch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sketch made to look measured: blur, background, noise, camera units."""
    blurred = ndimage.gaussian_filter(sketch.astype(np.float32), 1.0)
    noisy = blurred + rng.normal(0, 0.03, sketch.shape).astype(np.float32)
    return (noisy * 900 + 100).astype(np.float32)


def textured_microscope(made, rng: np.random.Generator, decades: float = 1.0) -> np.ndarray:
    """Simulated nuclei made to look like a real stain: each nucleus's brightness drawn over
    DECADES (many dim ones), chromatin texture and bright spots, dark nucleoli (from the
    simulator), blur, uneven illumination, shot and read noise."""
    masks, n = made.masks, int(made.masks.max())
    level = np.concatenate([[0.0], 10 ** rng.uniform(-decades, 0, n)])
    top = np.concatenate([[1.0], ndimage.maximum(made.sketch, masks, np.arange(1, n + 1))])
    relative = made.sketch / top[masks]  # 1, darker in nucleoli
    chromatin = ndimage.gaussian_filter(rng.normal(size=masks.shape), 1.2)
    chromatin /= chromatin.std()
    spots = ndimage.gaussian_filter((rng.random(masks.shape) < 0.01).astype(float), 1.0) * 6
    stain = level[masks] * relative * np.clip(1 + 0.3 * chromatin + spots, 0.2, None)
    illumination = 0.04 + 0.03 * np.linspace(0, 1, masks.shape[-2])[:, None]
    photons = rng.poisson((ndimage.gaussian_filter(stain, 1.5) + illumination) * 400)
    return (photons + rng.normal(0, 3, masks.shape) + 100).astype(np.float32)


def whole_mask_radii(masks: np.ndarray, z_per_xy: float = 1.0) -> np.ndarray:
    """Equal-area (2D) / equal-volume (3D, in in-plane voxels) radius of each mask that the
    image's y/x border does not cut."""
    sizes = np.bincount(masks.ravel()).astype(float)
    edge = np.unique(np.concatenate([masks[..., [0, -1], :].ravel(), masks[..., [0, -1]].ravel()]))
    sizes[edge] = 0
    sizes = sizes[1:][sizes[1:] > 0]
    if masks.ndim == 2:
        return np.sqrt(sizes / np.pi)
    return np.cbrt(3 * sizes * z_per_xy / (4 * np.pi))


def counted_like_the_detector(masks: np.ndarray) -> float:
    """Masks counted as the fit counts nuclei: one cut by the border by its size relative to
    the median whole one (its share of a nucleus whose centre is in the image)."""
    sizes = np.bincount(masks.ravel())[1:].astype(float)
    labels = np.flatnonzero(sizes) + 1
    sizes = sizes[labels - 1]
    edge = np.concatenate([masks[..., [0, -1], :].ravel(), masks[..., [0, -1]].ravel()])
    cut = np.isin(labels, edge)
    typical = np.median(sizes[~cut])
    return float(np.sum(np.where(cut, np.minimum(1.0, sizes / typical), 1.0)))


def simulated_images(tmp_path, changes, n=2, seed=0):
    """Volumes of the generic nuclei preset with known settings, written without masks."""
    config = replace(load_preset("nuclei"), changes, source="test")
    rng = np.random.default_rng(seed)
    counts = []
    for i in range(n):
        made = get_simulator("nuclei")(config, rng)
        counts.append(made.info["n_cells"])
        io.write_volume(
            tmp_path / "real",
            io.Volume(
                name=f"v{i}", image=microscope(made.sketch, rng), voxel_size=config.voxel_size
            ),
        )
    return tmp_path / "real", counts


def test_fit_2d_recovers_radius_count_and_aspect(tmp_path):
    data, counts = simulated_images(
        tmp_path,
        {
            "shape": [256, 256],
            "radius": [9, 9],
            "scale_x": [1, 1],
            "n_cells": [30, 30],
            "deform_strength": 0.0,
            "intensity": [0.5, 0.9],
        },
    )
    fit = fit_nuclei(data)
    found = [len(d) for d in fit.detections]
    for got, true in zip(found, counts, strict=True):
        assert abs(got - true) <= 0.15 * true, (found, counts)
    radius = np.median(np.concatenate([d.equivalent_radius for d in fit.detections]))
    assert abs(radius - 9) <= 0.15 * 9
    config = fit.config
    assert config.shape == (256, 256) and config.simulator == "nuclei"
    assert config.scale_x[0] > 0.75  # round nuclei: aspect ratios near 1
    assert 0.4 <= config.intensity[0] < config.intensity[1] <= 0.95
    assert config.region == "full"


def test_fit_3d_anisotropic_recovers_radius_count_and_z_squeeze(tmp_path):
    # z voxels 3x coarser than y/x: the simulator squeezes z by 1/3 (round in micrometres)
    data, counts = simulated_images(
        tmp_path,
        {
            "shape": [24, 128, 128],
            "voxel_size": [1.5, 0.5, 0.5],
            "anisotropy": 1 / 3,
            "radius": [8, 8],
            "scale_x": [1, 1],
            "n_cells": [20, 20],
            "deform_strength": 0.0,
            "intensity": [0.5, 0.9],
        },
    )
    fit = fit_nuclei(data)
    for got, true in zip([len(d) for d in fit.detections], counts, strict=True):
        assert abs(got - true) <= 0.15 * true
    radius = np.median(np.concatenate([d.equivalent_radius for d in fit.detections]))
    assert abs(radius - 8) <= 0.15 * 8
    assert fit.config.shape == (24, 128, 128)
    assert fit.config.voxel_size == (1.5, 0.5, 0.5)
    assert fit.config.anisotropy == pytest.approx(1 / 3, rel=1e-3)


def test_fit_sizes_and_counts_textured_nuclei_dim_ones_included(tmp_path):
    """Textured nuclei over a decade of brightness (as in real stains): sizes from regions,
    not from the LoG scale or a global threshold, which undersized them and missed the dim
    ones (before: radius -14 %, count -30 %)."""
    config = replace(
        load_preset("nuclei"),
        {
            "shape": [256, 256],
            "radius": [10, 16],
            "n_cells": [35, 35],
            "nucleoli": [1, 3],
            "touching_fraction": 0.3,
        },
        source="test",
    )
    rng = np.random.default_rng(0)
    radii, count, brightness = [], 0, []
    for i in range(2):
        made = get_simulator("nuclei")(config, rng)
        image = textured_microscope(made, rng)
        io.write_volume(tmp_path / "real", io.Volume(name=f"v{i}", image=image))
        radii.append(whole_mask_radii(made.masks))
        count += made.info["n_cells"]
        brightness.append(ndimage.mean(image, made.masks, np.arange(1, made.masks.max() + 1)))
    fit = fit_nuclei(tmp_path / "real")
    found = np.concatenate([d.equivalent_radius[d.complete] for d in fit.detections])
    true_radius = np.median(np.concatenate(radii))
    assert abs(np.median(found) - true_radius) <= 0.1 * true_radius, (found, true_radius)
    assert abs(sum(d.count for d in fit.detections) - count) <= 0.15 * count
    # the dim nuclei are in the brightness range: its low end is as dim as the real 10 %
    lo, hi = (float(v) for v in fit.estimates["intensity scale (1-99.8 %)"].split("-"))
    dim = (np.percentile(np.concatenate(brightness), 10) - lo) / (hi - lo)
    assert fit.config.intensity[0] <= 1.25 * dim
    # and so are the few brightest: its top end reaches past the real 90 %
    bright = (np.percentile(np.concatenate(brightness), 90) - lo) / (hi - lo)
    assert fit.config.intensity[1] >= bright


def test_fit_on_the_bundled_image_matches_its_masks(tmp_path):
    """Only the test reads the masks: fit sees the image alone."""
    (tmp_path / "real").mkdir()
    tifffile.imwrite(tmp_path / "real" / "dsb.tif", tifffile.imread(DSB_DIR / "dsb2018.tif"))
    fit = fit_nuclei(tmp_path / "real")
    found = fit.detections[0]
    masks = tifffile.imread(DSB_DIR / "dsb2018_masks.tif")
    n_masks = len(np.unique(masks)) - 1
    assert abs(len(found) - n_masks) <= 0.15 * n_masks
    assert abs(found.count - counted_like_the_detector(masks)) <= 0.15 * n_masks
    true_radius = np.median(whole_mask_radii(masks))
    radius = np.median(found.equivalent_radius[found.complete])
    assert abs(radius - true_radius) <= 0.1 * true_radius
    # the simulator's nuclei have that equal-area radius on average (it squeezes one axis)
    config = fit.config
    mean_area_radius = np.mean(config.radius) * np.sqrt(np.mean(config.scale_x))
    assert abs(mean_area_radius - true_radius) <= 0.1 * true_radius


def test_cli_fit_writes_a_preset_that_simulates(tmp_path):
    data, _ = simulated_images(
        tmp_path, {"shape": [128, 128], "radius": [8, 10], "n_cells": [15, 15]}, n=1
    )
    preset = tmp_path / "mine.toml"
    result = run("simulate", "fit", "--data", data, "-o", preset, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["picture"] == str(tmp_path / "mine.png")
    assert (tmp_path / "mine.png").read_bytes()[:4] == b"\x89PNG"
    with open(preset, "rb") as fh:
        written = tomllib.load(fh)
    assert written["simulator"] == "nuclei" and written["shape"] == [128, 128]
    again = run("simulate", "fit", "--data", data, "-o", preset)
    assert again.exit_code == 2 and "--overwrite" in again.output
    result = run("simulate", preset, "-n", 1, "-o", tmp_path / "sim", "--json")
    assert result.exit_code == 0, result.output
    volume = io.read_volume(tmp_path / "sim" / "mine_0000.zarr")
    assert volume.sketch.shape == (128, 128) and volume.masks.max() > 0
    assert volume.provenance["preset"] == "mine"


def test_fit_and_preset_file_errors(tmp_path):
    (tmp_path / "dark").mkdir()
    tifffile.imwrite(tmp_path / "dark" / "x.tif", np.zeros((64, 64), np.float32))
    result = run("simulate", "fit", "--data", tmp_path / "dark", "-o", tmp_path / "p.toml")
    assert result.exit_code == 2 and "found only 0 nuclei" in result.output
    assert not (tmp_path / "p.toml").exists()
    result = run("simulate", "fit", "--data", DSB_DIR, "-o", tmp_path / "p.txt")
    assert result.exit_code == 2 and ".toml" in result.output
    result = run("simulate", tmp_path / "missing.toml", "-n", 1, "-o", tmp_path / "s")
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "bad.toml").write_text("radius = [1,\n")
    result = run("simulate", tmp_path / "bad.toml", "-n", 1, "-o", tmp_path / "s")
    assert result.exit_code == 2 and "not valid TOML" in result.output


def test_generic_preset_works_in_2d_and_3d(tmp_path):
    for shape in ("96,96", "12,64,64"):
        out = tmp_path / shape.replace(",", "x")
        args = ["--set", "radius=5,7", "--set", "n_cells=5,8", "--shape", shape]
        result = run("simulate", "nuclei", "-n", 1, "-o", out, *args)
        assert result.exit_code == 0, result.output
        volume = io.read_volume(out / "nuclei_0000.zarr")
        assert volume.masks.shape == tuple(int(v) for v in shape.split(","))
        assert volume.voxel_size == (1.0,) * volume.masks.ndim
    result = run("simulate", "celegans", "-n", 1, "-o", tmp_path / "c", "--shape", "64,64")
    assert result.exit_code == 2 and "3D" in result.output  # anisotropic presets keep dims


def test_fit_sizes_and_counts_large_textured_nuclei_on_the_image_shrunk(tmp_path):
    """The bench's large textured nuclei (the bundled left half magnified 2.5x, chromatin
    grain, nucleoli: scripts/bench_data.py): the detector's pixel scales suit ~10 px nuclei,
    so the fit shrinks the image first and sizes each nucleus whole (0.93x the labels' count
    per image, 1.04x their median radius). Told the nuclei are small (`--radius 5`: not
    shrunk) the texture splits them, and the fit says so: the pieces make up 0.65 of the
    bright foreground (whole nuclei 1.27)."""
    folders = script_module("bench_data").build("dsb2018-x2.5-textured", tmp_path)
    labelled = io.read_volume(io.list_volumes(folders["real_train"])[0])
    true_count = counted_like_the_detector(labelled.masks)
    true_radius = np.median(whole_mask_radii(labelled.masks))

    def fitted(**kwargs) -> tuple[float, float, list[str]]:
        fit = fit_nuclei(folders["real_train_unlabelled"], **kwargs)
        radius = float(fit.estimates["radius (px, median)"])
        return fit.detections[0].count / true_count, radius / true_radius, fit.warnings

    count, radius, warnings = fitted()
    assert abs(count - 1) <= 0.2 and abs(radius - 1) <= 0.15, (count, radius)
    assert warnings == []
    count, radius, warnings = fitted(radius=5.0)
    assert count > 2 and radius < 0.5, (count, radius)
    assert len(warnings) == 1 and "bright foreground" in warnings[0], warnings
    with pytest.raises(InputError, match="radius"):
        fit_nuclei(folders["real_train_unlabelled"], radius=0.0)


def test_textured_large_nuclei_are_counted_by_the_watershed(monkeypatch):
    """Big nuclei with bright chromatin spots: LoG counts the spots, auto switches to the
    watershed, which finds each nucleus once with its size. Each detector's first pass runs
    once (auto weighs them, the watershed then starts from its own: seconds each in 3D)."""
    from cellsynth_cli.measure import detect
    from cellsynth_cli.measure.detect import detect_nuclei, log_blobs

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:256, :256]
    image = np.zeros((256, 256), np.float32)
    centres = [(50 + 78 * i, 50 + 78 * j) for i in range(3) for j in range(3)]
    for cy, cx in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 24**2] = 0.5
    spots = (rng.random(image.shape) < 0.02) & (image > 0)
    image += ndimage.gaussian_filter(spots.astype(np.float32), 1.5) * 6
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    assert len(log_blobs(image)) > 2 * len(centres)
    calls = []
    for name in ("log_blobs", "watershed_nuclei"):
        counted = getattr(detect, name)
        monkeypatch.setattr(detect, name, lambda *a, f=counted, **k: calls.append(f) or f(*a, **k))
    found = detect_nuclei(image)
    assert sorted(f.__name__ for f in calls) == ["log_blobs", "watershed_nuclei"]
    assert found.method == "watershed" and len(found) == len(centres)
    np.testing.assert_allclose(found.equivalent_radius, 24, rtol=0.1)


@pytest.mark.slow
def test_fit_on_the_bundled_3d_stack_matches_its_masks():
    """cells3d: 20 large textured nuclei (approximate masks, read only by the test)."""
    fit = fit_nuclei(REPO / "data" / "cells3d")
    found = fit.detections[0]
    assert found.method == "watershed"
    masks = tifffile.imread(REPO / "data" / "cells3d" / "cells3d_masks.tif")
    true_radius = np.median(whole_mask_radii(masks, z_per_xy=0.29 / 0.26))
    n_masks = len(np.unique(masks)) - 1
    assert abs(found.count - counted_like_the_detector(masks)) <= 0.15 * n_masks
    radius = np.median(found.equivalent_radius[found.complete])
    assert abs(radius - true_radius) <= 0.1 * true_radius
    assert fit.config.anisotropy == pytest.approx(0.26 / 0.29, rel=1e-3)
    # nuclei are flatter in z than in-plane (masks: median z/xy extent 0.72 in micrometres)
    assert 0.55 < np.mean(fit.config.scale_z) < 0.9
    assert fit.config.rotate_in_plane_only  # flat nuclei lie flat


@pytest.mark.slow
def test_fit_sizes_the_dimmed_3d_stack_whole(tmp_path):
    """The bench's cells3d-dim (the bundled stack's left half, 40 % of its nuclei dimmed
    3-10x): the watershed cuts the dim textured nuclei where their chromatin is, and the
    pieces, with no valley between them, are joined again (0.88x the labels' count at 1.00x
    their radius; without the join 1.63x at 0.63x); they make up the bright foreground."""
    folders = script_module("bench_data").build("cells3d-dim", tmp_path)
    labelled = io.read_volume(io.list_volumes(folders["real_train"])[0])
    z_per_xy = labelled.voxel_size[0] / labelled.voxel_size[-1]
    fit = fit_nuclei(folders["real_train_unlabelled"])
    found = fit.detections[0]
    count = found.count / counted_like_the_detector(labelled.masks)
    radius = np.median(found.equivalent_radius[found.complete]) / np.median(
        whole_mask_radii(labelled.masks, z_per_xy=z_per_xy)
    )
    assert abs(count - 1) <= 0.2 and abs(radius - 1) <= 0.15, (count, radius)
    assert fit.warnings == []


def test_fit_3d_squeezed_nuclei_recovers_the_base_radius(tmp_path):
    """Nuclei with semi-axes (r, r, 0.5 r), r = 8: their equal-volume radius is
    8 * 0.5^(1/3) = 6.35; the fit widens it back by the 3D rule, not the 2D one."""
    data, _ = simulated_images(
        tmp_path,
        {
            "shape": [32, 128, 128],
            "voxel_size": [1.0, 1.0, 1.0],
            "radius": [8, 8],
            "scale_x": [0.5, 0.5],
            "n_cells": [15, 15],
            "deform_strength": 0.0,
            "intensity": [0.6, 0.9],
        },
    )
    fit = fit_nuclei(data)
    detected = np.median(np.concatenate([d.equivalent_radius for d in fit.detections]))
    assert abs(detected - 8 * 0.5 ** (1 / 3)) <= 0.15 * 8 * 0.5 ** (1 / 3)
    assert abs(np.mean(fit.config.radius) - 8) <= 0.15 * 8


def test_a_bare_preset_name_is_never_a_stray_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nuclei").write_text("radius = [1, 2]\n")
    assert load_preset("nuclei").radius == (8.0, 14.0)  # the bundled one
    (tmp_path / "mine.toml").write_text("radius = [1, 2]\n")
    assert load_preset("mine.toml").radius == (1.0, 2.0)


def test_fit_refuses_simulation_options(tmp_path):
    result = run("simulate", "fit", "--data", DSB_DIR, "-o", tmp_path / "p.toml", "-n", 5)
    assert result.exit_code == 2 and "-n" in result.output
    assert not (tmp_path / "p.toml").exists()


def test_wide_spread_spans_the_rare_nuclei_the_central_one_leaves_out(tmp_path):
    data, _ = simulated_images(
        tmp_path, {"shape": [192, 192], "radius": [5, 14], "n_cells": [25, 25]}, n=1
    )
    central = fit_nuclei(data).config
    wide = fit_nuclei(data, spread="wide").config
    for name in ("radius", "intensity", "scale_x"):
        (c_lo, c_hi), (w_lo, w_hi) = getattr(central, name), getattr(wide, name)
        assert w_lo <= c_lo and w_hi >= c_hi, name
    assert wide.radius[0] < central.radius[0] and wide.radius[1] > central.radius[1]
    result = run("simulate", "fit", "--data", data, "-o", tmp_path / "w.toml", "--spread", "wide")
    assert result.exit_code == 0, result.output
    assert "2-98 %" in result.output
    bad = run("simulate", "fit", "--data", data, "-o", tmp_path / "x.toml", "--spread", "huge")
    assert bad.exit_code == 2 and "spread must be one of central, wide" in bad.output
    misplaced = run("simulate", "nuclei", "-n", 1, "--spread", "wide", "-o", tmp_path / "s")
    assert misplaced.exit_code == 2 and "--spread is for `simulate fit`" in misplaced.output


def test_a_nucleus_cut_where_there_is_no_valley_is_joined_but_touching_nuclei_are_not():
    """A nucleus whose seeds cut it into a bright part and a dimmer one, with no valley
    between them, is one nucleus; two touching nuclei with a dim seam stay two."""
    from cellsynth_cli.measure.detect import _joined_without_valley

    yy, xx = np.mgrid[:64, :128]
    image = np.full((64, 128), 0.05, np.float32)
    regions = np.zeros((64, 128), np.int32)
    nucleus = (yy - 32) ** 2 + (xx - 32) ** 2 <= 14**2
    image[nucleus] = np.where(xx[nucleus] < 30, 0.8, 0.45)  # dense chromatin on one side
    regions[nucleus] = np.where(xx[nucleus] < 30, 1, 2)  # cut where it dims
    for label, cx in ((3, 84), (4, 108)):
        disc = (yy - 32) ** 2 + (xx - cx) ** 2 <= 12**2
        image[disc], regions[disc] = 0.7, label
    image[:, 95:97] = np.where(regions[:, 95:97] > 0, 0.2, image[:, 95:97])  # the seam
    joined = _joined_without_valley(image, None, regions)
    assert len(np.unique(joined[nucleus])) == 1
    assert len(np.unique(joined[regions >= 3])) == 2


def test_dim_nuclei_beside_bright_ones_are_found_and_sized_and_nothing_else():
    """Nuclei five to ten times dimmer than their neighbours (under LoG's threshold on the
    [0, 1] scale, whose top a few of the brightest set) are found by the second look, each
    once and about its size; no bright nucleus's glow becomes one."""
    from cellsynth_cli.measure.detect import detect_nuclei

    image, masks, level = dim_and_bright_nuclei()
    found = detect_nuclei(image, method="log")
    hit = masks[tuple(found.centres.T)]
    assert np.all(hit > 0), "a detection outside every nucleus"
    assert sorted(hit) == list(range(1, 17)), hit  # every nucleus, each once
    dim_ones = level[hit] < 0.05
    assert dim_ones.sum() == 4
    assert np.all(np.abs(found.equivalent_radius[dim_ones] / 11 - 1) < 0.25)
