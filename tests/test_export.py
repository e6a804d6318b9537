"""`cellsynth export`: ImageJ TIFFs with the voxel size, read back by tifffile and by us."""

import json

import numpy as np
import pytest
import tifffile
from conftest import run, run_cellsynth

from cellsynth_cli import io
from cellsynth_cli.io.export import write_tiff_volume


@pytest.fixture
def volumes(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "synth"
    masks3d = np.zeros((6, 20, 24), np.uint16)
    masks3d[2:4, 5:10, 5:12] = 1
    masks3d[1:5, 12:18, 14:20] = 2
    io.write_volume(
        src,
        io.Volume(
            name="stack",
            image=rng.random((6, 20, 24)).astype(np.float32),
            masks=masks3d,
            voxel_size=(2.0, 0.25, 0.5),
        ),
    )
    io.write_volume(
        src,
        io.Volume(
            name="flat", sketch=rng.random((16, 16)).astype(np.float32), voxel_size=(0.5, 0.5)
        ),
    )
    return src


def test_tiff_voxel_size_in_imagej_metadata(tmp_path, volumes):
    out = tmp_path / "tiff"
    result = run("export", volumes, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [v["name"] for v in report["volumes"]] == ["flat", "stack"]
    assert sorted(p.name for p in out.iterdir()) == ["flat.tif", "stack.tif", "stack_masks.tif"]
    with tifffile.TiffFile(out / "stack.tif") as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["spacing"] == pytest.approx(2.0)
        assert tif.imagej_metadata["unit"] == "um"
        x_num, x_den = tif.pages[0].tags["XResolution"].value
        y_num, y_den = tif.pages[0].tags["YResolution"].value
        assert x_den / x_num == pytest.approx(0.5) and y_den / y_num == pytest.approx(0.25)
        assert tif.series[0].shape == (6, 20, 24)
    original = io.read_volume(volumes / "stack.zarr")
    back = io.read_volume(out / "stack.tif")  # our TIFF reader finds NAME_masks.tif beside it
    np.testing.assert_array_equal(back.image, original.image)
    np.testing.assert_array_equal(back.masks, original.masks)
    assert back.voxel_size == pytest.approx((2.0, 0.25, 0.5))
    flat = io.read_volume(out / "flat.tif")  # a simulated volume exports its sketch
    np.testing.assert_array_equal(flat.image, io.read_volume(volumes / "flat.zarr").sketch)
    assert flat.masks is None and flat.voxel_size == pytest.approx((0.5, 0.5))


def test_export_refuses_to_overwrite_and_keeps_files(tmp_path, volumes):
    out = tmp_path / "tiff"
    assert run("export", volumes, "-o", out).exit_code == 0
    before = (out / "stack.tif").read_bytes()
    (out / "stack.tif").write_bytes(b"edited by the user")
    result = run("export", volumes, "-o", out)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "stack.tif").read_bytes() == b"edited by the user"
    assert run("export", volumes, "-o", out, "--overwrite").exit_code == 0
    assert (out / "stack.tif").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_many_labels_stay_exact(tmp_path):
    masks = np.arange(1, 70_001, dtype=np.uint32).reshape(1, 70_000).repeat(2, axis=0)
    volume = io.Volume(name="many", image=np.zeros(masks.shape, np.float32), masks=masks)
    write_tiff_volume(tmp_path, volume)
    back = tifffile.imread(tmp_path / "many_masks.tif")
    assert back.dtype == np.float32  # ImageJ has no 32-bit integers
    np.testing.assert_array_equal(back.astype(np.uint32), masks)


def test_export_bad_input(tmp_path, volumes):
    assert run("export", tmp_path / "missing").exit_code == 2
    result = run("export", volumes, "--to", "png")
    assert result.exit_code == 2 and "--to" in result.output
    result = run("export", volumes, "-o", volumes)
    assert result.exit_code == 2 and "source" in result.output


def test_paths_with_brackets_are_printed_as_they_are(tmp_path, volumes):
    # rich would read "[/]" as a closing tag and fail after the work was done
    out = tmp_path / "run[1][/]"
    result = run_cellsynth("export", volumes, "-o", out)
    assert result.returncode == 0, result.stderr
    assert f"into {out}" in " ".join(result.stderr.split())
    assert (out / "stack.tif").exists()
    result = run_cellsynth("export", tmp_path / "no[/]such")
    assert result.returncode == 2 and "no[/]such" in result.stderr
