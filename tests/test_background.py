"""Real background squares as empty Cellpose training images (segment train --background)."""

import json
import logging

import numpy as np
import pytest
from conftest import discs, run, run_cellsynth
from scipy import ndimage

from cellsynth_cli import io
from cellsynth_cli.errors import InputError
from cellsynth_cli.segment.background import background_crops, normalize_like_cellpose
from cellsynth_cli.segment.cellpose_compat import empty_masks_allowed


def write(folder, name, image, masks=None):
    io.write_volume(folder, io.Volume(name=name, image=image, masks=masks))


def test_crops_avoid_every_nucleus_do_not_overlap_and_keep_the_source_normalisation(tmp_path):
    # nuclei fill the left half; the right half is free
    centres = [(y, x) for y in range(12, 160, 22) for x in range(12, 80, 22)]
    image, masks = discs((160, 160), centres)
    write(tmp_path / "real", "a", image)
    crops = background_crops(tmp_path / "real", diameter=12.0, n_crops=4)
    assert 1 <= len(crops) <= 4
    normalised = normalize_like_cellpose(image)
    near_nucleus = ndimage.binary_dilation(masks > 0, iterations=3)  # margin 0.25 x 12
    taken = np.zeros(image.shape, int)
    for crop in crops:
        y, x = crop.corner
        side = crop.image.shape[0]
        assert crop.image.shape == (30, 30)  # 2.5 diameters
        assert not near_nucleus[y : y + side, x : x + side].any()
        # normalised by the whole image's 1-99 %, as Cellpose will normalise it when it predicts
        np.testing.assert_allclose(crop.image, normalised[y : y + side, x : x + side])
        taken[y : y + side, x : x + side] += 1
    assert taken.max() == 1  # no two squares share a pixel
    # a pure-background crop stays dark on that scale (its own 1-99 % would stretch it)
    assert all(float(np.median(c.image)) < 0.1 for c in crops)


def test_a_crowded_image_has_no_background_square(tmp_path):
    centres = [(y, x) for y in range(6, 64, 12) for x in range(6, 64, 12)]
    write(tmp_path / "real", "dense", *discs((64, 64), centres)[:1])
    with pytest.raises(InputError, match="no square of 30 px clear of nuclei"):
        background_crops(tmp_path / "real", diameter=12.0, n_crops=2)
    with pytest.raises(InputError, match="--background-crops must be >= 1"):
        background_crops(tmp_path / "real", diameter=12.0, n_crops=0)


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value encountered")
def test_empty_masks_count_as_cells_of_the_training_diameter_only_while_training(caplog):
    from cellpose import dynamics, utils

    empty = np.zeros((32, 32), np.int32)
    one = np.zeros((32, 32), np.int32)
    one[4:14, 4:14] = 1
    before = utils.diameters(one)[0]
    with empty_masks_allowed(17.0):
        assert utils.diameters(empty)[0] == 17.0
        with caplog.at_level(logging.WARNING, logger="cellpose.dynamics"):
            dynamics.labels_to_flows([empty])
        assert "empty masks!" not in caplog.text
        assert utils.diameters(one)[0] == before  # cells are measured as cellpose measures
    assert utils.diameters(empty)[0] == 0  # cellpose's own function again
    with caplog.at_level(logging.WARNING, logger="cellpose.dynamics"):
        dynamics.labels_to_flows([empty])
    assert "empty masks!" in caplog.text  # and its own warning


def test_segment_train_with_background_through_the_entry_point(tmp_path):
    from cellpose import models

    centres = [(y, x) for y in range(10, 96, 20) for x in range(10, 96, 20)]
    synth = tmp_path / "synth"
    for seed in range(2):
        write(synth, f"s{seed}", *discs((96, 96), centres, seed=seed))
    real = tmp_path / "real"
    sparse = [(20, 20), (20, 70), (70, 20)]
    write(real, "r", discs((128, 128), sparse, seed=5)[0])
    out = tmp_path / "seg"
    args = ["segment", "train", "--data", synth, "-o", out, "--epochs", 3, "--bsize", 32]
    args += ["--batch", 2, "--background", real, "--background-crops", 2, "--json"]
    done = run_cellsynth(*args)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["n_training_images"] == 2 and config["background"] == str(real)
    assert len(config["background_crops"]) == 2
    assert all(c["source"] == "r" and c["side"] == 30 for c in config["background_crops"])
    assert (out / "cellpose_model").is_file()

    # in-process: cellpose's own normalisation default is left as it was
    result = run(*[str(a) for a in args[:-1]] + ["-o", str(tmp_path / "seg2")])
    assert result.exit_code == 0, result.output
    assert models.normalize_default["normalize"] is True

    # refusals: one line, exit 2, nothing written
    crowded = tmp_path / "crowded"
    write(crowded, "c", discs((64, 64), [(y, x) for y in (8, 32, 56) for x in (8, 32, 56)])[0])
    for extra, message in (
        (["--background", crowded], "no square of"),
        (["--background-crops", 3], "--background-crops needs --background"),
    ):
        bad = ["segment", "train", "--data", synth, "-o", tmp_path / "bad", "--epochs", 1]
        done = run_cellsynth(*bad, *extra)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert not (tmp_path / "bad").exists()
