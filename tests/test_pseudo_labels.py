"""Self-training: which predicted cells become pseudo-labels (found again in the mirrored
image, a plausible size), the crops cut around them (ignored cells named, their pixels
training nothing), the drift guard that picks the kept round, and `segment pseudo-label`
through the executable."""

from __future__ import annotations

import json

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
from cellsynth_cli.segment.slices import IGNORED, NORMALISED, TrainingSlices, training_slices
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
        assert crop.masks.max() == len(np.unique(crop.masks)) - 1 >= 1  # renumbered
        assert crop.provenance[IGNORED] == _unconfident_in(crop, pseudo)
        covered[window] = True
    # a crop centred on each of the three confident cells holds all of it
    assert len(crops) == 3
    for label in pseudo.provenance["confident"]:
        assert covered[pseudo.masks == label].all()
    # a confident cell beside an ignored one still gets its crop, the ignored cell named
    beside = pseudo.masks.copy()
    beside[20:28, 80:88] = 9  # 2 px right of the blob at (20, 70): ignored
    crowded = io.Volume("c", pseudo.image, beside, provenance=pseudo.provenance)
    crowded_crops = training_crops(crowded, tile_cells=3.0)
    assert len(crowded_crops) == 3
    assert [len(c.provenance[IGNORED]) for c in crowded_crops] == [0, 1, 0]  # 9, renumbered
    assert all(c.provenance[IGNORED] == _unconfident_in(c, crowded) for c in crowded_crops)


def test_regions_only_the_mirror_finds_are_ignored_on_request(tmp_path, mirror_blind):
    """The fake model's corner artefact lands in the opposite corner of the mirrored view:
    a region only the mirror calls a cell. By default it stays background; with
    mirror_only = "ignored" it becomes a label of its own that the crops ignore."""
    settings = PseudoLabelling(tile_cells=8.0, mirror_only="ignored")
    assert pseudo_label(mirror_blind, tmp_path / "real", tmp_path / "as-is")[0]["n_cells"] == 4
    rows = pseudo_label(mirror_blind, tmp_path / "real", tmp_path / "pseudo", settings)
    assert rows == [{"name": "blobs", "n_cells": 4, "n_confident": 3}]  # as without it
    as_is = io.read_volume(tmp_path / "as-is" / "blobs.zarr")
    pseudo = io.read_volume(tmp_path / "pseudo" / "blobs.zarr")
    assert as_is.masks[-1, -1] == 0 and "mirror_only" not in as_is.provenance
    assert pseudo.provenance["mirror_only"] == [5] and (pseudo.masks[-6:, -6:] == 5).all()
    np.testing.assert_array_equal(pseudo.masks[pseudo.masks != 5], as_is.masks[pseudo.masks != 5])
    crops = training_crops(pseudo, settings.tile_cells)  # 64 px squares
    assert all(c.provenance[IGNORED] == _unconfident_in(c, pseudo) for c in crops)
    corner = [c for c in crops if c.provenance["window"][-1][1] == 96]
    assert corner and all(c.masks[-1, -1] in c.provenance[IGNORED] for c in corner)


def _unconfident_in(crop: io.Volume, pseudo: io.Volume) -> list[int]:
    """The crop's labels (renumbered) of the source's cells that are not confident."""
    window = tuple(slice(a, b) for a, b in crop.provenance["window"])
    unconfident = (pseudo.masks[window] > 0) & ~np.isin(
        pseudo.masks[window], pseudo.provenance["confident"]
    )
    return sorted(set(crop.masks[unconfident].tolist()))


def test_ignored_cells_train_nothing_in_2d_and_3d_slices(tmp_path):
    masks = np.zeros((4, 16, 16), np.int32)
    masks[:, 2:7, 2:7] = 1  # a confident cell
    masks[1:3, 9:14, 9:14] = 2  # an ignored one
    image = masks.astype(np.float32)
    for volume in (
        io.Volume("flat", image[1], masks[1], provenance={IGNORED: [2]}),
        io.Volume("stack", image, masks, voxel_size=(1, 1, 1), provenance={IGNORED: [2]}),
    ):
        folder = tmp_path / volume.name
        io.write_volume(folder, volume)
        found = training_slices(folder)
        assert found.has_ignored_pixels()
        for m, ignored in zip(found.masks, found.ignored, strict=True):
            assert not (m == 2).any()  # neither a cell nor background: no label at all
            if ignored is not None:
                assert ignored.any() and not (m[ignored]).any()
        # the ignored cell's pixels of the xy slices are exactly what is marked
        xy = [i for i, p in zip(found.ignored, found.planes, strict=True) if p == "xy"]
        assert sum(int(i.sum()) for i in xy if i is not None) == int((volume.masks == 2).sum())
    io.write_volume(tmp_path / "plain", io.Volume("p", image[1], masks[1]))
    assert not training_slices(tmp_path / "plain").has_ignored_pixels()


def test_the_ignore_aware_loss_is_cellposes_without_ignored_pixels_and_blind_to_them(tmp_path):
    import torch

    from cellsynth_cli.segment.cellpose_compat import (
        cellpose_modules,
        flows_with_ignored,
        ignore_aware_loss,
    )

    _, train = cellpose_modules(tmp_path)
    masks = np.zeros((24, 24), np.int32)
    masks[3:10, 3:10], masks[14:21, 12:20] = 1, 2
    ignored = np.zeros((24, 24), bool)
    ignored[12:24, 10:24] = True
    cellpose_labels = train.dynamics.labels_to_flows([masks.copy()], device=torch.device("cpu"))
    ours = flows_with_ignored([masks, masks], [None, ignored], torch.device("cpu"))
    for labels in ours:
        assert labels.shape == (5, 24, 24)
        np.testing.assert_array_equal(labels[[0, 1, 3, 4]], cellpose_labels[0])
    np.testing.assert_array_equal(ours[1][2], ignored)
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.normal(size=(2, 3, 24, 24)).astype(np.float32))
    none_ignored = np.stack([ours[0][1:], ours[0][1:]])
    plain = np.stack([cellpose_labels[0][1:]] * 2)
    with ignore_aware_loss():
        assert torch.equal(
            train._loss_fn_seg(none_ignored, y, "cpu"), train._loss_fn_seg(plain, y, "cpu")
        )
        some = np.stack([ours[1][1:]] * 2)
        before = train._loss_fn_seg(some, y, "cpu")
        changed = y.clone()
        changed[..., 12:24, 10:24] += 3.0  # only ignored pixels change
        assert torch.equal(train._loss_fn_seg(some, changed, "cpu"), before)
        changed[..., 0:5, 0:5] += 3.0  # a trained pixel changes the loss
        assert not torch.equal(train._loss_fn_seg(some, changed, "cpu"), before)
    assert train._loss_fn_seg.__module__ == "cellpose.train"  # restored


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


def test_a_round_with_fewer_confident_cells_or_fewer_cells_ends_the_kept_rounds():
    def rounds(*confident, cells=None):
        cells = cells or [20] * len(confident)
        return [
            {"round": k + 1, "n_confident": n, "n_cells": c}
            for k, (n, c) in enumerate(zip(confident, cells, strict=True))
        ]

    assert kept_round(rounds(10)) == 1
    assert kept_round(rounds(10, 12, 11, 15)) == 2  # round 3 drifted: 3 and 4 are not kept
    assert kept_round(rounds(10, 9, 20)) == 1
    assert kept_round(rounds(10, 10, 13)) == 1  # a tie keeps the earlier round
    # sure of every cell it finds, but it finds fewer: the measured round-2 generator
    assert kept_round(rounds(29, 30, cells=[31, 30])) == 1
    assert kept_round(rounds(29, 30, cells=[31, 32])) == 2
    assert kept_round(rounds(29, 30, 31, cells=[31, 31, 30])) == 2


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
    unknown = run_cellsynth(
        "segment",
        "pseudo-label",
        *("--model", mirror_blind, "--images", tmp_path / "real", "-o", tmp_path / "o"),
        *("--mirror-only", "kept"),
    )
    assert unknown.returncode == 2 and "mirror_only" in unknown.stderr
    assert "background or ignored" in unknown.stderr and not (tmp_path / "o").exists()


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
        assert crop.provenance[IGNORED] == _unconfident_in(crop, pseudo)


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


@pytest.mark.parametrize("dims", [2, 3])
def test_segment_train_takes_crops_with_ignored_cells(tmp_path, dims):
    """Through the executable: a synthetic image and a pseudo-label crop whose second cell
    is ignored train together (cellpose gets our labels with the ignored channel); in 3D
    the ignored cell is cut into the xy, xz and yz slices with the rest."""
    data = tmp_path / "train"
    masks = np.zeros((48, 48), np.int32)
    masks[8:20, 8:20], masks[28:40, 26:38] = 1, 2
    if dims == 3:
        masks = np.stack([masks * 0] + [masks] * 4 + [masks * 0])
    image = (masks > 0).astype(np.float32) + 0.05
    voxel = (1.0,) * dims
    io.write_volume(data, io.Volume("synthetic", image * 100, masks, voxel_size=voxel))
    crop = {NORMALISED: True, IGNORED: [2]}
    io.write_volume(
        data, io.Volume("real-crop000", image, masks, voxel_size=voxel, provenance=crop)
    )
    out = tmp_path / "seg"
    args = ("--epochs", 3, "--bsize", 32, "--batch", 2, "--json")
    done = run_cellsynth("segment", "train", "--data", data, "-o", out, *args)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    assert config["n_training_images"] == (2 if dims == 2 else sum(config["n_slices"].values()))
    # every slice of the crop crosses the ignored cell except xz / yz ones beside it
    assert 1 <= config["n_with_ignored_pixels"] <= config["n_training_images"] // 2
    assert (out / "cellpose_model").is_file()


def test_pseudo_labels_are_drawn_without_the_dimmed_pass_that_predict_adds(tmp_path, monkeypatch):
    """Cells brighter than the segmenter's training nuclei: predict segments the image twice
    (brightness matching), pseudo-labelling once per view (image and mirror)."""
    from cellsynth_cli.segment import brightness
    from cellsynth_cli.segment.model import CONFIG_FILE
    from cellsynth_cli.segment.predict import predict

    calls = []

    class Counting(MirrorBlindModel):
        def eval(self, x, **kwargs):
            calls.append(kwargs.get("normalize", True))
            return super().eval(x, **kwargs)

    model_dir = fake_segmenter(tmp_path / "seg", Counting(), monkeypatch, 8.0, 2)
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    config[brightness.CONFIG_KEY] = 0.5  # the blobs (about 1 after normalising) outshine it
    (model_dir / CONFIG_FILE).write_text(json.dumps(config))
    io.write_volume(tmp_path / "real", _blobs())

    predict(model_dir, tmp_path / "real", tmp_path / "pred")
    assert calls == [True, False]  # the first pass, then the dimmed one (normalised already)
    calls.clear()
    pseudo_label(model_dir, tmp_path / "real", tmp_path / "pseudo")
    assert calls == [True, True]  # the image and its mirror, neither dimmed
