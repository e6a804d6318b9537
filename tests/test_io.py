"""OME-Zarr / TIFF volume I/O: round trips, NGFF validity, atomic writes, clear input errors."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import run_cellsynth
from full_disk import failing_set, sitecustomize_source
from zarr.storage import LocalStore

from cellsynth_cli import __version__, io
from cellsynth_cli.errors import InputError

DSB_DIR = Path(__file__).parent.parent / "data" / "dsb2018"


def make_volume(shape=(6, 40, 50), name="vol_0001", seed=0, big_label=False) -> io.Volume:
    rng = np.random.default_rng(seed)
    masks = rng.integers(0, 7, shape).astype(np.int32)
    if big_label:
        masks.flat[0] = 70_000
    return io.Volume(
        name=name,
        image=rng.integers(0, 4000, shape).astype(np.uint16),
        masks=masks,
        sketch=rng.random(shape, dtype=np.float32),
        voxel_size=(2.0, 0.5, 0.25)[-len(shape) :],
        provenance=io.provenance("synthesize", seed=np.int64(7), t_start=np.float32(0.5)),
    )


def tree_state(path: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and bytes of every file below path: proves nothing was touched."""
    return {
        str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def hidden_entries(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 50), (6, 40, 50)])
def test_round_trip(tmp_path, shape):
    vol = make_volume(shape)
    path = io.write_volume(tmp_path / "out", vol)
    assert path == tmp_path / "out" / "vol_0001.zarr" == io.volume_path(tmp_path / "out", vol.name)

    back = io.read_volume(path)
    assert back.name == "vol_0001"
    assert back.ndim == len(shape) and back.shape == shape
    np.testing.assert_array_equal(back.image, vol.image)
    assert back.image.dtype == np.uint16
    np.testing.assert_array_equal(back.masks, vol.masks)
    assert back.masks.dtype == np.uint16
    np.testing.assert_array_equal(back.sketch, vol.sketch)
    assert back.sketch.dtype == np.float32
    assert back.voxel_size == vol.voxel_size
    # numpy scalars were converted to plain JSON values
    assert back.provenance == json.loads(json.dumps(back.provenance))
    assert back.provenance["seed"] == 7 and back.provenance["t_start"] == 0.5
    assert back.provenance["stage"] == "synthesize"
    assert back.provenance["version"] == __version__
    assert hidden_entries(tmp_path / "out") == []


def test_masks_uint32_above_uint16(tmp_path):
    vol = make_volume((4, 20, 30), big_label=True)
    back = io.read_volume(io.write_volume(tmp_path, vol))
    assert back.masks.dtype == np.uint32
    assert back.masks.max() == 70_000
    np.testing.assert_array_equal(back.masks, vol.masks)


def test_simulated_volume_has_sketch_but_no_image(tmp_path):
    rng = np.random.default_rng(1)
    sketch = rng.random((30, 40), dtype=np.float32)
    vol = io.Volume(
        name="sim_0000",
        masks=rng.integers(0, 3, (30, 40)),
        sketch=sketch,
        provenance=io.provenance("simulate", preset="nuclei"),
    )
    path = io.write_volume(tmp_path, vol)
    group = zarr.open_group(str(path), mode="r")
    # array 0 shows the sketch so viewers display something
    np.testing.assert_array_equal(group["0"][...], sketch)
    back = io.read_volume(path)
    assert back.image is None
    np.testing.assert_array_equal(back.sketch, sketch)
    assert back.voxel_size == (1.0, 1.0)
    assert back.shape == (30, 40)


def test_layout_and_ngff_metadata(tmp_path):
    vol = make_volume((6, 40, 50))
    path = io.write_volume(tmp_path, vol)
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    (ms,) = ome["multiscales"]
    assert [a["name"] for a in ms["axes"]] == ["z", "y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [2.0, 0.5, 0.25]
    assert group.attrs["cellsynth"]["stage"] == "synthesize"
    assert group["labels"].attrs["ome"]["labels"] == ["cells"]
    cells = group["labels/cells"].attrs["ome"]
    assert cells["image-label"]["source"]["image"] == "../../"


def test_ome_zarr_reader_opens_image_and_labels(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Labels, Multiscales, Reader

    path = io.write_volume(tmp_path, make_volume((6, 40, 50)))
    nodes = list(Reader(parse_url(str(path)))())
    image = nodes[0]
    assert any(isinstance(s, Multiscales) for s in image.specs)
    assert image.data[0].shape == (6, 40, 50)
    assert [a["name"] for a in image.metadata["axes"]] == ["z", "y", "x"]
    assert any(isinstance(s, Labels) for n in nodes for s in n.specs)
    (label,) = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert label.data[0].shape == (6, 40, 50)
    assert str(label.data[0].dtype) == "uint16"


def test_ome_zarr_models_validate(tmp_path):
    from ome_zarr_models.v05 import Image, ImageLabel, Labels

    path = io.write_volume(tmp_path, make_volume((40, 50)))
    group = zarr.open_group(str(path), mode="r")
    image = Image.from_zarr(group)
    scale = image.ome_attributes.multiscales[0].datasets[0].coordinateTransformations[0].scale
    assert list(scale) == [0.5, 0.25]
    assert Labels.from_zarr(group["labels"]).ome_attributes.labels == ["cells"]
    label = ImageLabel.from_zarr(group["labels/cells"])
    assert label.ome_attributes.image_label.source.image == "../../"


# --- atomic writes -------------------------------------------------------------------------


def test_refuse_overwrite_leaves_disk_unchanged(tmp_path):
    path = io.write_volume(tmp_path, make_volume(seed=0))
    before = tree_state(path)
    with pytest.raises(InputError, match=str(path)):
        io.write_volume(tmp_path, make_volume(seed=1))
    assert tree_state(path) == before
    assert hidden_entries(tmp_path) == []


def test_overwrite_replaces(tmp_path):
    io.write_volume(tmp_path, make_volume(seed=0))
    new = make_volume((20, 30), seed=1)
    path = io.write_volume(tmp_path, new, overwrite=True)
    back = io.read_volume(path)
    assert back.shape == (20, 30)
    np.testing.assert_array_equal(back.image, new.image)
    assert hidden_entries(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["vol_0001.zarr"]


def test_failure_mid_write_keeps_old_volume(tmp_path, monkeypatch):
    old = make_volume(seed=0)
    path = io.write_volume(tmp_path, old)
    before = tree_state(path)

    real_create = zarr.AsyncGroup.create_array
    calls = []

    async def failing_create(self, name, **kwargs):
        calls.append(name)
        if name == "sketch":  # after array 0 is already on disk in the temporary
            raise RuntimeError("boom")
        return await real_create(self, name, **kwargs)

    monkeypatch.setattr(zarr.AsyncGroup, "create_array", failing_create)
    with pytest.raises(RuntimeError, match="boom"):
        io.write_volume(tmp_path, make_volume(seed=1), overwrite=True)
    assert calls == ["0", "sketch"]
    assert tree_state(path) == before
    assert hidden_entries(tmp_path) == []
    np.testing.assert_array_equal(io.read_volume(path).image, old.image)


def test_failed_rename_restores_old_volume(tmp_path, monkeypatch):
    path = io.write_volume(tmp_path, make_volume(seed=0))
    before = tree_state(path)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".vol_0001.zarr.tmp-"):
            raise OSError(errno.EIO, "I/O error")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError):
        io.write_volume(tmp_path, make_volume(seed=1), overwrite=True)
    assert tree_state(path) == before
    assert hidden_entries(tmp_path) == []


def test_no_space_left_becomes_input_error(tmp_path, monkeypatch):
    async def full(self, name, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.AsyncGroup, "create_array", full)
    out = tmp_path / "new" / "deeper"
    with pytest.raises(InputError, match="no space left on device while writing .*vol_0001.zarr"):
        io.write_volume(out, make_volume())
    assert out.is_dir()  # created on demand
    assert list(out.iterdir()) == []


SLOW_WRITE = 0.3  # seconds each injected chunk write takes: the others are in flight


def test_full_disk_mid_array_leaves_no_temporary(tmp_path, monkeypatch):
    """The 3rd chunk write fails while the others still write: they must not bring the
    deleted temporary back, and the old volume stays."""
    old = io.write_volume(tmp_path, make_volume((40, 600), seed=0))  # 3 chunks per array
    before = tree_state(old)
    monkeypatch.setattr(LocalStore, "set", failing_set(fail_at=3, delay=SLOW_WRITE))
    with pytest.raises(InputError, match="no space left on device while writing .*vol_0001"):
        io.write_volume(tmp_path, make_volume((40, 600), seed=1), overwrite=True)
    time.sleep(2 * SLOW_WRITE)  # a writer still running would recreate the temporary by now
    assert hidden_entries(tmp_path) == []
    assert tree_state(old) == before


def test_cli_full_disk_is_one_line_without_asyncio_noise(tmp_path):
    """The real `cellsynth` on a (simulated) full disk: one error line, exit 2, no temporary,
    no "Task was destroyed but it is pending!" from tasks zarr left running."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(sitecustomize_source(3, SLOW_WRITE))
    out = tmp_path / "sim"
    shape = ["--shape", "64,3072", "--set", "radius=6,9", "--set", "n_cells=5,10"]
    result = run_cellsynth(
        "simulate", "hela", "-n", 1, "-o", out, *shape, env={"PYTHONPATH": str(hook)}
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines == [f"error: no space left on device while writing {out}/hela_0000.zarr"]
    assert list(out.iterdir()) == []


def test_existing_outputs(tmp_path):
    io.write_volume(tmp_path, make_volume(name="a"))
    assert io.existing_outputs(tmp_path, ["a", "b"]) == [tmp_path / "a.zarr"]
    assert io.existing_outputs(tmp_path / "missing", ["a"]) == []


def test_provenance_fields():
    prov = io.provenance("simulate", preset="nuclei", seed=3)
    assert prov["stage"] == "simulate" and prov["preset"] == "nuclei" and prov["seed"] == 3
    assert prov["version"] == __version__
    assert isinstance(prov["command"], str) and "T" in prov["created"]


# --- listing -------------------------------------------------------------------------------


def test_list_volumes_sorted_ignores_hidden(tmp_path):
    for name in ["b", "a", "c"]:
        io.write_volume(tmp_path, make_volume((10, 12), name=name))
    (tmp_path / ".a.zarr.tmp-1234").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    assert io.list_volumes(tmp_path) == [tmp_path / f"{n}.zarr" for n in "abc"]
    assert io.list_volumes(tmp_path / "b.zarr") == [tmp_path / "b.zarr"]
    assert [v.name for v in io.read_volumes(tmp_path)] == ["a", "b", "c"]
    assert [io.volume_name(p) for p in io.list_volumes(tmp_path)] == ["a", "b", "c"]


def test_tiff_pair_is_one_volume(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (5, 20, 30)).astype(np.uint8)
    masks = rng.integers(0, 4, (5, 20, 30)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", image)
    tifffile.imwrite(tmp_path / "x_masks.tif", masks)
    tifffile.imwrite(tmp_path / "y.tiff", image[0])
    assert io.list_volumes(tmp_path) == [tmp_path / "x.tif", tmp_path / "y.tiff"]
    x, y = io.read_volumes(tmp_path)
    assert x.name == "x" and x.image.dtype == np.uint8
    np.testing.assert_array_equal(x.image, image)
    np.testing.assert_array_equal(x.masks, masks)
    assert x.voxel_size is None and x.sketch is None
    assert y.name == "y" and y.masks is None and y.shape == (20, 30)


def test_tiff_singleton_axis_squeezed_and_imagej_spacing(tmp_path):
    image = np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 1, 8, 9)
    tifffile.imwrite(
        tmp_path / "s.tif",
        image,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um"},
    )
    vol = io.read_volume(tmp_path / "s.tif")
    assert vol.shape == (3, 8, 9)
    assert vol.voxel_size == pytest.approx((2.0, 0.5, 0.5))


def test_real_dsb2018_tiff(tmp_path):
    assert io.list_volumes(DSB_DIR) == [DSB_DIR / "dsb2018.tif"]
    vol = io.read_volume(DSB_DIR / "dsb2018.tif")
    assert vol.name == "dsb2018"
    assert vol.shape == (256, 512) and vol.image.dtype == np.uint16
    assert vol.masks is not None and vol.masks.shape == vol.shape
    assert vol.masks.max() > 10  # many curated nuclei
    # and it survives a trip through our zarr layout
    back = io.read_volume(io.write_volume(tmp_path, vol))
    np.testing.assert_array_equal(back.image, vol.image)
    np.testing.assert_array_equal(back.masks, vol.masks)


# --- errors --------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match=str(missing)):
        io.list_volumes(missing)
    with pytest.raises(InputError, match=str(missing)):
        io.read_volume(missing)


def test_empty_directory(tmp_path):
    (tmp_path / "x_masks.tif").write_bytes(b"")  # masks alone are no volume
    with pytest.raises(InputError, match=f"{tmp_path}: no \\*.zarr"):
        io.list_volumes(tmp_path)


@pytest.mark.parametrize("damage", ["delete", "garbage"])
def test_corrupt_zarr(tmp_path, damage):
    path = io.write_volume(tmp_path, make_volume())
    meta = path / "zarr.json"
    if damage == "delete":
        meta.unlink()
    else:
        meta.write_text("{not json")
    with pytest.raises(InputError, match=str(path)) as info:
        io.read_volume(path)
    assert "\n" not in str(info.value)


def test_zarr_without_array_0(tmp_path):
    path = tmp_path / "odd.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=3).create_array("x", shape=(2, 2), dtype="u1")
    with pytest.raises(InputError, match=f"{path}.*no array '0'"):
        io.read_volume(path)


def test_bad_tiff(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"this is not a tiff")
    with pytest.raises(InputError, match=str(bad)):
        io.read_volume(bad)


def test_4d_arrays_rejected(tmp_path):
    four = np.zeros((2, 3, 4, 5), dtype=np.float32)
    with pytest.raises(InputError, match="vol4.zarr.*shape \\(2, 3, 4, 5\\)"):
        io.write_volume(tmp_path, io.Volume("vol4", image=four))
    tif = tmp_path / "four.tif"
    tifffile.imwrite(tif, four, photometric="minisblack")
    with pytest.raises(InputError, match=f"{tif}.*\\(2, 3, 4, 5\\)"):
        io.read_volume(tif)
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((8, 9, 3), np.uint8), photometric="rgb")
    with pytest.raises(InputError, match=f"{rgb}.*channel"):
        io.read_volume(rgb)
    assert list(tmp_path.glob("*.zarr")) == []


def test_nan_image(tmp_path):
    image = np.ones((4, 5), dtype=np.float32)
    image[1, 2] = np.nan
    with pytest.raises(InputError, match="n.zarr.*NaN"):
        io.write_volume(tmp_path, io.Volume("n", image=image))
    tif = tmp_path / "n.tif"
    tifffile.imwrite(tif, image)
    with pytest.raises(InputError, match=f"{tif}.*NaN"):
        io.read_volume(tif)
    sketch = np.full((4, 5), np.inf, dtype=np.float32)
    with pytest.raises(InputError, match="NaN or infinite"):
        io.write_volume(tmp_path, io.Volume("s", sketch=sketch))
    assert not any(tmp_path.glob("*.zarr"))


def test_bad_masks(tmp_path):
    image = np.ones((4, 5), dtype=np.uint16)
    with pytest.raises(InputError, match="differ in shape"):
        io.write_volume(tmp_path, io.Volume("m", image=image, masks=np.zeros((4, 6), np.uint16)))
    with pytest.raises(InputError, match="integer dtype"):
        io.write_volume(tmp_path, io.Volume("m", image=image, masks=np.zeros((4, 5), np.float32)))
    with pytest.raises(InputError, match="negative"):
        io.write_volume(tmp_path, io.Volume("m", image=image, masks=-np.ones((4, 5), np.int16)))
    tifffile.imwrite(tmp_path / "t.tif", image)
    tifffile.imwrite(tmp_path / "t_masks.tif", np.zeros((4, 6), np.uint16))
    with pytest.raises(InputError, match=f"{tmp_path / 't_masks.tif'}.*differs"):
        io.read_volume(tmp_path / "t.tif")


def test_bad_voxel_size(tmp_path):
    vol = io.Volume("v", image=np.zeros((3, 4, 5), np.uint8), voxel_size=(1.0, 1.0))
    with pytest.raises(InputError, match="v.zarr.*voxel_size"):
        io.write_volume(tmp_path, vol)
