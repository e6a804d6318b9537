"""t_start without labels: real images against simulated sketches, compared as sets."""

from __future__ import annotations

import json

import numpy as np
import tifffile
from conftest import run_cellsynth
from scipy import ndimage

from cellsynth_cli.ddpm.noise_analysis import noise_analysis
from cellsynth_cli.simulate.config import load_preset, replace
from cellsynth_cli.simulate.simulators import get_simulator

TIMESTEPS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000)


def _microscope(sketch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A known 'real' look for a sketch: blurred, a dim background, camera noise."""
    image = 0.1 + 0.8 * ndimage.gaussian_filter(sketch, 1.5)
    return (1000 * (image + rng.normal(0, 0.04, sketch.shape))).astype(np.float32)


def _known_set(folder, n: int = 3) -> None:
    """Images whose true sketches and masks are known (simulated nuclei, made to look real)."""
    config = replace(
        load_preset("nuclei"),
        {"shape": [128, 128], "voxel_size": [1.0, 1.0], "radius": [7, 9], "n_cells": [12, 16]},
        source="test",
    )
    simulator = get_simulator(config.simulator)
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        sim = simulator(config, np.random.default_rng(i))
        tifffile.imwrite(folder / f"v{i}.tif", _microscope(sim.sketch, rng))
        tifffile.imwrite(folder / f"v{i}_masks.tif", sim.masks.astype(np.uint16))


def test_label_free_t_start_matches_the_one_from_true_sketches(tmp_path):
    labelled = tmp_path / "labelled"
    _known_set(labelled)
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    for path in labelled.glob("v?.tif"):
        (unlabelled / path.name).write_bytes(path.read_bytes())

    from_labels = noise_analysis(labelled, None, TIMESTEPS)
    label_free = noise_analysis(unlabelled, None, TIMESTEPS, max_volumes=3)

    assert from_labels.paired and not label_free.paired
    kld = np.array(label_free.kld)
    assert kld[0] > 1 and np.all(np.diff(kld[:5]) < 0)  # alike as t grows, as with labels
    assert label_free.recommended_t_start is not None
    # the fitted preset's sketches are not the true ones; one grid step apart at most
    assert abs(label_free.recommended_t_start - from_labels.recommended_t_start) <= 100


def test_noise_analysis_cli_without_masks_does_not_refuse(tmp_path):
    real = tmp_path / "real"
    _known_set(real, n=2)
    for masks in real.glob("*_masks.tif"):
        masks.unlink()
    result = run_cellsynth("noise-analysis", "--images", real, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["paired"] is False and data["recommended_t_start"] in TIMESTEPS[1:]
    assert "fitted to" in result.stderr and "no masks to make a sketch" not in result.stderr
