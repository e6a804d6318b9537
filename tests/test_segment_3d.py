"""Cellpose on 3D: xy + resampled xz/yz training slices, 3D-mode prediction by default."""

import json

import numpy as np
import pytest
from conftest import fake_segmenter, run

from cellsynth_cli import io
from cellsynth_cli.segment import model as segmenter
from cellsynth_cli.segment import slices as training

VOXEL = (2.0, 0.5, 0.5)  # z steps 4x the x steps


def two_boxes() -> io.Volume:
    """(6, 32, 40) volume: z planes 0 and 5 empty, cell 1 on z 1-2, cell 2 on z 2-4."""
    masks = np.zeros((6, 32, 40), np.uint16)
    masks[1:3, 4:12, 5:15] = 1
    masks[2:5, 18:28, 22:34] = 2
    # an image that varies along z, so interpolation shows
    image = np.where(masks > 0, 100.0, 10.0) + np.arange(6)[:, None, None]
    return io.Volume(name="boxes", image=image.astype(np.float32), masks=masks, voxel_size=VOXEL)


def test_xz_yz_slices_resampled_to_isotropic_with_labels_kept():
    v = two_boxes()
    slices = training.volume_slices(v.image, v.masks, training.z_anisotropy(v.voxel_size))
    planes = [plane for plane, _, _ in slices]
    # xy: z 1-4 (0 and 5 hold no cell); 18 xz rows + 22 yz columns cross a cell, evenly
    # subsampled to as many as the xy slices: indices 0, 13, 26, 39 = xz y=4, y=23, yz x=13, 33
    assert planes == ["xy"] * 4 + ["xz", "xz", "yz", "yz"]
    for plane, im, m in slices:
        assert np.issubdtype(m.dtype, np.integer) and im.shape == m.shape
        assert m.any()
        if plane == "xy":
            assert im.shape == (32, 40)
            continue
        assert im.shape == ((24, 40) if plane == "xz" else (24, 32))  # z 6 -> 24
    (_, xz0, xz0_m), (_, xz1, xz1_m), (_, yz0, yz0_m), (_, yz1, yz1_m) = slices[4:]
    for resampled, original in (
        (xz0_m, v.masks[:, 4, :]),
        (xz1_m, v.masks[:, 23, :]),
        (yz0_m, v.masks[:, :, 13]),
        (yz1_m, v.masks[:, :, 33]),
    ):
        # nearest neighbour, pixels as areas: each z plane becomes 4 identical rows
        assert (resampled == np.repeat(original, 4, axis=0)).all()
    # linear interpolation between plane centres (rows 1.5 + 4k), the edges held
    original = v.image[:, 4, :]
    assert np.allclose(xz0[:2], original[0]) and np.allclose(xz0[-2:], original[-1])
    assert np.allclose(xz0[2], 0.875 * original[0] + 0.125 * original[1])
    assert original.min() <= xz0.min() and xz0.max() <= original.max()


def test_no_subsampling_when_the_xy_slices_are_many_and_xy_only_option():
    masks = np.zeros((20, 8, 8), np.uint8)
    masks[:, 2:6, 3:5] = 7
    image = masks.astype(np.float32)
    slices = training.volume_slices(image, masks, anisotropy=1.0)
    planes = [p for p, _, _ in slices]
    assert planes.count("xy") == 20 and planes.count("xz") == 4 and planes.count("yz") == 2
    assert all(m.shape == (20, 8) for p, _, m in slices if p != "xy")  # isotropic: as is
    xy_only = training.volume_slices(image, masks, anisotropy=1.0, orthogonal=False)
    assert [p for p, _, _ in xy_only] == ["xy"] * 20


def test_training_slices_from_disk_counts_and_unknown_voxel_size(tmp_path):
    v = two_boxes()
    io.write_volume(tmp_path / "aniso", v)
    found = training.training_slices(tmp_path / "aniso")
    assert found.dims == 3 and found.counts() == {"xy": 4, "xz": 2, "yz": 2}
    assert all(
        m.dtype == np.int32 and im.dtype == np.float32
        for im, m in zip(found.images, found.masks, strict=True)
    )
    assert len(found.xy_masks()) == 4 and all(m.shape == (32, 40) for m in found.xy_masks())
    assert found.images[4].shape == (24, 40)
    # the diameter prediction uses comes from the xy slices only
    assert training.median_diameter(found.xy_masks()) == pytest.approx(
        2 * np.sqrt(np.median([80, 80, 120, 120, 120]) / np.pi)
    )
    # voxel size unknown: taken as isotropic, xz/yz slices keep their 6 z rows
    v.voxel_size = None
    io.write_volume(tmp_path / "unknown", v)
    found = training.training_slices(tmp_path / "unknown")
    assert [im.shape for im, p in zip(found.images, found.planes, strict=True) if p == "xz"] == [
        (6, 40),
        (6, 40),
    ]
    assert training.training_slices(tmp_path / "aniso", slices="xy").counts() == {
        "xy": 4,
        "xz": 0,
        "yz": 0,
    }
    result = run(
        "segment", "train", "--data", tmp_path / "aniso", "-o", tmp_path / "m", "--slices", "xz"
    )
    assert result.exit_code == 2
    assert "--slices must be all or xy, got 'xz'" in result.output
    assert not (tmp_path / "m").exists()


class FakeModel:
    """Records the keyword arguments of eval and returns one cell per image."""

    def __init__(self):
        self.calls = []

    def eval(self, x, **kwargs):
        self.calls.append(kwargs)
        masks = np.zeros(x.shape, np.int32)
        masks[..., 2:6, 2:6] = 1
        return masks, None, None


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    """A model folder that passes segmenter_config, with cellpose replaced by FakeModel."""
    model = FakeModel()
    return fake_segmenter(tmp_path / "seg", model, monkeypatch, 12.0, 3), model


def test_3d_predict_defaults_to_3d_mode_with_the_voxel_anisotropy(tmp_path, fake_model):
    model_dir, model = fake_model
    io.write_volume(tmp_path / "real", two_boxes())
    result = run(
        "segment",
        "predict",
        "--model",
        model_dir,
        "--images",
        tmp_path / "real",
        "-o",
        tmp_path / "pred",
    )
    assert result.exit_code == 0, result.output
    (call,) = model.calls
    assert call["do_3D"] is True and call["anisotropy"] == pytest.approx(4.0)
    assert call["z_axis"] == 0 and call["diameter"] == 12.0 and "stitch_threshold" not in call
    pred = io.read_volume(io.volume_path(tmp_path / "pred", "boxes"))
    assert pred.masks.shape == (6, 32, 40)
    assert pred.provenance["mode"] == "3d" and pred.provenance["anisotropy"] == 4.0

    result = run(
        "segment",
        "predict",
        "--model",
        model_dir,
        "--images",
        tmp_path / "real",
        "-o",
        tmp_path / "pred",
        "--mode",
        "stitch",
        "--overwrite",
    )
    assert result.exit_code == 0, result.output
    assert model.calls[-1]["do_3D"] is False and model.calls[-1]["stitch_threshold"] == 0.5

    result = run(
        "segment",
        "predict",
        "--model",
        model_dir,
        "--images",
        tmp_path / "real",
        "-o",
        tmp_path / "other",
        "--mode",
        "2d",
    )
    assert result.exit_code == 2
    assert "--mode must be 3d or stitch, got '2d'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "other").exists()


def test_2d_predict_ignores_mode_and_qc_follows_predict(tmp_path, fake_model):
    model_dir, model = fake_model
    v = two_boxes()
    io.write_volume(tmp_path / "flat", io.Volume(name="flat", image=v.image[2], masks=v.masks[2]))
    result = run(
        "segment",
        "predict",
        "--model",
        model_dir,
        "--images",
        tmp_path / "flat",
        "-o",
        tmp_path / "pred",
        "--mode",
        "stitch",
    )
    assert result.exit_code == 0, result.output
    assert "do_3D" not in model.calls[-1] and "z_axis" not in model.calls[-1]

    v.voxel_size = (1.5, 0.5, 0.5)
    io.write_volume(tmp_path / "synth", v)
    result = run("segment", "qc", "--model", model_dir, "--data", tmp_path / "synth", "--json")
    assert result.exit_code == 0, result.output
    assert model.calls[-1]["do_3D"] is True and model.calls[-1]["anisotropy"] == 3.0
    result = run(
        "segment",
        "qc",
        "--model",
        model_dir,
        "--data",
        tmp_path / "synth",
        "--mode",
        "stitch",
        "--json",
    )
    assert result.exit_code == 0 and model.calls[-1]["stitch_threshold"] == 0.5


def ball_volume(name: str, seed: int) -> io.Volume:
    """(8, 36, 68) stack, voxel (2, 0.5, 0.5): two spheres of radius ~16 px, noisy image.

    Cells near Cellpose's 30 px diameter keep its 3D mode from upsampling (it is slow on CPU).
    """
    rng = np.random.default_rng(seed)
    shape = (8, 36, 68)
    z, y, x = np.indices(shape).astype(float)
    z *= VOXEL[0] / VOXEL[-1]  # isotropic units
    masks = np.zeros(shape, np.uint16)
    for label, cx in enumerate((17, 51), 1):
        r = rng.uniform(15, 17)
        masks[(z - 14) ** 2 + (y - 18) ** 2 + (x - cx) ** 2 < r**2] = label
    image = np.where(masks > 0, 150.0, 20.0) + rng.normal(0, 5, shape)
    return io.Volume(name=name, image=image.astype(np.float32), masks=masks, voxel_size=VOXEL)


@pytest.mark.slow
def test_tiny_3d_set_trains_on_all_planes_and_predicts_in_3d(tmp_path):
    for seed in range(2):
        io.write_volume(tmp_path / "synth", ball_volume(f"train{seed}", seed))
    io.write_volume(tmp_path / "real", ball_volume("real", 7))
    result = run(
        "segment",
        "train",
        "--data",
        tmp_path / "synth",
        "-o",
        tmp_path / "seg",
        "--epochs",
        2,
        "--images-per-epoch",
        8,
        "--bsize",
        64,
        "--batch",
        4,
        "--json",
    )
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)
    assert config["dims"] == 3 and config["slices"] == "all"
    counts = config["n_slices"]
    assert counts["xy"] == 16 and 0 < counts["xz"] + counts["yz"] <= counts["xy"]
    assert counts["xz"] > 0 and counts["yz"] > 0
    assert config["n_training_images"] == sum(counts.values())
    xy = training.training_slices(tmp_path / "synth").xy_masks()
    assert config["diameter"] == pytest.approx(training.median_diameter(xy))

    for mode in ("3d", "stitch"):
        result = run(
            "segment",
            "predict",
            "--model",
            tmp_path / "seg",
            "--images",
            tmp_path / "real",
            "-o",
            tmp_path / mode,
            "--mode",
            mode,
            "--json",
        )
        assert result.exit_code == 0, result.output
        pred = io.read_volume(io.volume_path(tmp_path / mode, "real"))
        assert pred.masks.shape == (8, 36, 68) and pred.masks.dtype.kind == "u"
        assert pred.voxel_size == VOXEL and pred.provenance["mode"] == mode
        assert pred.provenance["anisotropy"] == 4.0


class FragmentingModel(FakeModel):
    """One cell (6 x 10 x 10 voxels) and, beside it, a 1-voxel fragment labelled 2."""

    def eval(self, x, **kwargs):
        self.calls.append(kwargs)
        masks = np.zeros(x.shape, np.int32)
        masks[..., 2:12, 2:12] = 1
        masks[(0,) * (x.ndim - 2) + (20, 20)] = 2
        return masks, None, None


def test_3d_predict_drops_fragments_by_default_and_keeps_them_when_asked(tmp_path, monkeypatch):
    """A typical cell of diameter 12 at anisotropy 4 is pi/6 * 12^3 / 4 = 226 voxels: 0.1 of
    it (23) drops a one-voxel fragment (and renumbers), 0 keeps it; 2D keeps it by default."""
    assert segmenter.min_cell_size(12.0, 3, 4.0, 0.1) == 23
    assert segmenter.min_cell_size(12.0, 2, 1.0, 0.5) == round(0.5 * np.pi / 4 * 144)
    model_dir = fake_segmenter(tmp_path / "seg", FragmentingModel(), monkeypatch, 12.0, 3)
    v = two_boxes()
    io.write_volume(tmp_path / "real", v)
    io.write_volume(tmp_path / "flat", io.Volume(name="flat", image=v.image[2]))

    def predicted(images, out, *options):
        result = run(
            "segment", "predict", "--model", model_dir, "--images", images, "-o", out, *options
        )
        assert result.exit_code == 0, result.output
        return io.read_volume(io.list_volumes(out)[0])

    dropped = predicted(tmp_path / "real", tmp_path / "p3")
    assert set(np.unique(dropped.masks)) == {0, 1}
    assert dropped.provenance["min_size_fraction"] == 0.1
    kept = predicted(tmp_path / "real", tmp_path / "p0", "--min-size-fraction", 0)
    assert set(np.unique(kept.masks)) == {0, 1, 2}
    flat = predicted(tmp_path / "flat", tmp_path / "p2")
    assert set(np.unique(flat.masks)) == {0, 1, 2} and flat.provenance["min_size_fraction"] == 0
    bad = run("segment", "predict", "--model", model_dir, "--images", tmp_path / "real",
              "-o", tmp_path / "bad", "--min-size-fraction", 1.5)  # fmt: skip
    assert bad.exit_code == 2 and "--min-size-fraction must be in [0, 1)" in bad.output
    assert not (tmp_path / "bad").exists()
