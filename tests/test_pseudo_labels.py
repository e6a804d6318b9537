"""Self-training: which predicted cells become pseudo-labels (found again in the mirrored
image, a plausible size), the crops cut around them (never an ignored cell inside), the
drift guard that picks the kept round, and `segment pseudo-label` through the executable."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import fake_segmenter, run_cellsynth
from scipy import ndimage

from cellsynth_cli import io
from cellsynth_cli.pipeline.rounds import kept_round
from cellsynth_cli.segment.background import normalize_like_cellpose
from cellsynth_cli.segment.config import PseudoLabelling
from cellsynth_cli.segment.pseudo_labels import (
    confident_labels,
    pseudo_label,
    training_crops,
)
from cellsynth_cli.segment.slices import NORMALISED, TrainingSlices
from cellsynth_cli.segment.train import _with_background


def test_confident_cells_are_found_again_and_of_a_plausible_size():
    masks = np.zeros((40, 40), np.int32)
    masks[2:10, 2:10] = 1  # found again exactly
    masks[20:28, 2:10] = 2  # found again shifted by 4 px: IoU 1/3
    masks[0:1, 39:40] = 3  # found again, but 1 px
    masks[12:38, 12:38] = 4  # found again, but far too big
    again = masks.copy()
    again[masks == 2] = 0
    again[24:32, 2:10] = 2
    assert confident_labels(masks, again, smallest=10, largest=200, min_iou=0.8) == [1]
    assert confident_labels(masks, again, smallest=1, largest=1000, min_iou=0.8) == [1, 3, 4]
    assert confident_labels(masks, again, smallest=1, largest=1000, min_iou=0.3) == [1, 2, 3, 4]


class MirrorBlindModel:
    """Finds the bright blobs (mirror-equivariant) plus an artefact at a fixed corner, which
    the mirrored image puts in the opposite corner: the artefact is never confident."""

    def eval(self, x, **kwargs):
        masks, _ = ndimage.label(x > 0.5)
        masks[..., 0:6, 0:6] = masks.max() + 1
        return masks.astype(np.int32), None, None


def _blobs() -> io.Volume:
    image = np.zeros((64, 96), np.float32)
    for y, x in ((20, 20), (20, 70), (48, 44)):
        image[y - 4 : y + 4, x - 4 : x + 4] = 1.0
    return io.Volume("blobs", image=image)


@pytest.fixture
def mirror_blind(tmp_path, monkeypatch):
    model_dir = fake_segmenter(tmp_path / "seg", MirrorBlindModel(), monkeypatch, 8.0, 2)
    io.write_volume(tmp_path / "real", _blobs())
    return model_dir


def test_pseudo_labels_keep_every_cell_and_mark_the_confident_ones(tmp_path, mirror_blind):
    rows = pseudo_label(mirror_blind, tmp_path / "real", tmp_path / "pseudo")
    assert rows == [{"name": "blobs", "n_cells": 4, "n_confident": 3}]
    pseudo = io.read_volume(tmp_path / "pseudo" / "blobs.zarr")
    artefact = int(pseudo.masks[0, 0])
    assert sorted(pseudo.provenance["confident"]) == sorted(set(range(1, 5)) - {artefact})
    assert pseudo.provenance["diameter"] == 8.0

    crops = training_crops(pseudo, tile_cells=3.0)  # 24 px squares
    assert crops
    covered = np.zeros(pseudo.masks.shape, bool)
    for crop in crops:
        window = tuple(slice(a, b) for a, b in crop.provenance["window"])
        assert crop.image.shape == crop.masks.shape == (24, 24)
        # scaled as Cellpose scales the whole source image when it predicts, not the crop
        np.testing.assert_array_equal(crop.image, normalize_like_cellpose(pseudo.image)[window])
        assert crop.provenance[NORMALISED] is True
        assert not (pseudo.masks[window] == artefact).any()  # no ignored cell inside
        assert crop.masks.max() == len(np.unique(crop.masks)) - 1 >= 1  # renumbered
        covered[window] = True
    # a crop centred on each of the three confident cells holds all of it
    assert len(crops) == 3
    for label in pseudo.provenance["confident"]:
        assert covered[pseudo.masks == label].all()
    # a confident cell beside an ignored one gets no crop (its square would hold both)
    beside = pseudo.masks.copy()
    beside[20:28, 80:88] = 9  # 2 px right of the blob at (20, 70): ignored
    crowded = io.Volume("c", pseudo.image, beside, provenance=pseudo.provenance)
    assert len(training_crops(crowded, tile_cells=3.0)) == 2


def test_pseudo_label_refuses_bad_settings_and_existing_outputs(tmp_path, mirror_blind):
    from cellsynth_cli.errors import InputError

    with pytest.raises(InputError, match="min_iou"):
        pseudo_label(mirror_blind, tmp_path / "real", tmp_path / "p", PseudoLabelling(min_iou=0))
    with pytest.raises(InputError, match="min_size < max_size"):
        pseudo_label(mirror_blind, tmp_path / "real", tmp_path / "p", PseudoLabelling(min_size=5.0))
    assert not (tmp_path / "p").exists()
    first = pseudo_label(mirror_blind, tmp_path / "real", tmp_path / "p")
    with pytest.raises(InputError, match="--resume"):
        pseudo_label(mirror_blind, tmp_path / "real", tmp_path / "p")
    # --resume keeps the volume; its row's counts come back from its provenance
    kept = pseudo_label(mirror_blind, tmp_path / "real", tmp_path / "p", resume=True)
    assert kept == [{**first[0], "skipped": True}]


def test_a_round_with_fewer_confident_cells_ends_the_kept_rounds():
    def rounds(*confident):
        return [{"round": k + 1, "n_confident": n} for k, n in enumerate(confident)]

    assert kept_round(rounds(10)) == 1
    assert kept_round(rounds(10, 12, 11, 15)) == 2  # round 3 drifted: 3 and 4 are not kept
    assert kept_round(rounds(10, 9, 20)) == 1
    assert kept_round(rounds(10, 10, 13)) == 1  # a tie keeps the earlier round


def test_pseudo_label_command_writes_labels_and_crops(tmp_path, mirror_blind):
    """Through the installed executable: the fake model cannot cross a process boundary, so
    this checks the command's bad input; the library tests above check the labels."""
    missing = run_cellsynth(
        "segment", "pseudo-label", "--model", tmp_path / "none", "--images", tmp_path / "real"
    )
    assert missing.returncode == 2
    assert "not a segmentation model" in missing.stderr
    assert "Traceback" not in missing.stderr
    bad = run_cellsynth(
        "segment",
        "pseudo-label",
        *("--model", mirror_blind, "--images", tmp_path / "real", "-o", tmp_path / "o"),
        *("--min-iou", "1.5"),
    )
    assert bad.returncode == 2 and "min_iou" in bad.stderr
    assert not (tmp_path / "o").exists()


def test_3d_pseudo_labels_and_crops_keep_every_slice(tmp_path, mirror_blind):
    image = np.zeros((6, 64, 96), np.float32)
    image[1:5] = _blobs().image
    image[3, 60, 50] = 1.0  # a one-voxel fragment: dropped by 3D's size filter, as in predict
    io.write_volume(tmp_path / "real3d", io.Volume("stack", image=image, voxel_size=(2, 1, 1)))
    rows = pseudo_label(mirror_blind, tmp_path / "real3d", tmp_path / "pseudo3d", mode="stitch")
    assert rows == [{"name": "stack", "n_cells": 4, "n_confident": 3}]
    unfiltered = pseudo_label(
        mirror_blind, tmp_path / "real3d", tmp_path / "raw3d", mode="stitch", min_size_fraction=0
    )
    assert unfiltered[0]["n_cells"] == 5
    pseudo = io.read_volume(tmp_path / "pseudo3d" / "stack.zarr")
    crops = training_crops(pseudo, tile_cells=3.0)
    assert len(crops) == 3
    for crop in crops:
        assert crop.image.shape == (6, 24, 24) and crop.voxel_size == (2.0, 1.0, 1.0)
        assert crop.masks.max() >= 1


def test_normalised_crops_are_kept_and_the_other_images_scaled_like_cellpose():
    rng = np.random.default_rng(0)
    synthetic, crop = rng.random((32, 32)) * 200, rng.random((32, 32)).astype(np.float32)
    masks = [np.ones((32, 32), np.int32)] * 2
    found = TrainingSlices([synthetic, crop], masks, ["xy", "xy"], [False, True], dims=2)
    images, _, normalize, extra = _with_background(found, None, 10.0, 0, 0)
    assert normalize == {"normalize": False} and extra == []
    np.testing.assert_array_equal(images[0], normalize_like_cellpose(synthetic))
    assert images[1] is crop
    plain = TrainingSlices([synthetic], masks[:1], ["xy"], [False], dims=2)
    assert _with_background(plain, None, 10.0, 0, 0)[2] is True  # Cellpose normalises
