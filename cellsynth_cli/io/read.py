"""Reading: the volumes of a folder, one OME-Zarr group or TIFF (with NAME_masks.tif beside),
and a group's provenance without its arrays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth_cli.errors import InputError
from cellsynth_cli.io.volume import (
    LABEL_NAME,
    MASKS_SUFFIX,
    SIMULATE_STAGE,
    TIFF_SUFFIXES,
    Volume,
    check_volume,
    volume_name,
)

# Errors that zarr, json and the file system raise for a missing or mangled group; zarr's own
# errors are ValueErrors, a garbage zarr.json is a JSONDecodeError (also a ValueError).
_ZARR_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)


def _is_zarr_path(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" or (path.is_dir() and (path / "zarr.json").exists())


def _is_tiff_image(path: Path) -> bool:
    return (
        path.is_file()
        and path.suffix.lower() in TIFF_SUFFIXES
        and not path.stem.endswith(MASKS_SUFFIX)
    )


def list_volumes(directory: Path) -> list[Path]:
    """The volumes in a directory, sorted: *.zarr groups and *.tif images (not *_masks.tif)."""
    directory = Path(directory)
    if not directory.exists():
        raise InputError(f"{directory}: no such file or directory")
    if _is_zarr_path(directory) or directory.is_file():
        return [directory]
    found = [
        p
        for p in directory.iterdir()
        if not p.name.startswith(".")  # our temporaries and backups are hidden
        and ((p.suffix.lower() == ".zarr" and p.is_dir()) or _is_tiff_image(p))
    ]
    if not found:
        raise InputError(f"{directory}: no *.zarr volumes and no *.tif images in this directory")
    return sorted(found)


def read_volumes(directory: Path) -> Iterator[Volume]:
    """Read the volumes of a directory one at a time (only one is held in memory)."""
    for path in list_volumes(directory):
        yield read_volume(path)


def read_images(directory: Path, purpose: str) -> list[Volume]:
    """The volumes of DIRECTORY that have an intensity image, all 2D or all 3D; PURPOSE ("train
    on", "fit") names the work in the message when there is none or they mix."""
    volumes = [v for v in read_volumes(directory) if v.image is not None]
    if not volumes:
        raise InputError(f"{directory}: no intensity images to {purpose} (only sketches?)")
    if len({v.image.ndim for v in volumes}) > 1:
        raise InputError(f"{directory}: mixes 2D and 3D images; {purpose} one kind")
    return volumes


def read_volume(path: Path) -> Volume:
    """Read one volume from a *.zarr group or a *.tif/*.tiff file (with NAME_masks.tif beside)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if _is_zarr_path(path):
        volume = _read_zarr(path)
    elif path.is_file() and path.suffix.lower() in TIFF_SUFFIXES:
        volume = _read_tiff_volume(path)
    else:
        raise InputError(f"{path}: not a volume (expected a *.zarr group or a *.tif file)")
    check_volume(volume, str(path))
    return volume


def _voxel_size_from(attrs: dict, ndim: int) -> tuple[float, ...] | None:
    """The scale of dataset 0 (NGFF 0.5 keeps metadata under `ome`, 0.4 at the top level)."""
    meta = attrs.get("ome", attrs)
    try:
        dataset = meta["multiscales"][0]["datasets"][0]
        for transform in dataset.get("coordinateTransformations", []):
            if transform.get("type") == "scale" and len(transform["scale"]) == ndim:
                return tuple(float(v) for v in transform["scale"])
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    return None


def read_provenance(path: Path) -> dict:
    """The `cellsynth` provenance of a zarr volume, without reading its arrays ({} if none)."""
    import zarr

    try:
        prov = dict(zarr.open_group(store=str(path), mode="r").attrs).get("cellsynth", {})
    except _ZARR_READ_ERRORS as exc:
        raise InputError(f"{path}: not a readable zarr group ({exc})") from exc
    return prov if isinstance(prov, dict) else {}


def _read_zarr(path: Path) -> Volume:
    import zarr

    try:
        group = zarr.open_group(store=str(path), mode="r")
        attrs = dict(group.attrs)
        members = set(group.array_keys())
        if "0" not in members:
            raise InputError(f"{path}: not a cellsynth volume: the zarr group has no array '0'")
        image = np.asarray(group["0"][...])
        sketch = np.asarray(group["sketch"][...]) if "sketch" in members else None
        masks = None
        label_path = f"labels/{LABEL_NAME}/0"
        if label_path in group:
            masks = np.asarray(group[label_path][...])
    except InputError:
        raise
    except _ZARR_READ_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable zarr group ({reason})") from exc

    prov = attrs.get("cellsynth", {})
    if not isinstance(prov, dict):
        prov = {}
    if sketch is not None and prov.get("stage") == SIMULATE_STAGE:
        image = None  # array 0 of a simulated volume is the sketch shown as an image, not data
    ndim = (image if image is not None else sketch).ndim
    return Volume(
        name=volume_name(path),
        image=image,
        masks=masks,
        sketch=sketch,
        voxel_size=_voxel_size_from(attrs, ndim),
        provenance=prov,
    )


def _read_tiff(path: Path) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """A 2D or 3D TIFF image in its own dtype, with the ImageJ voxel size when there is one."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes
            data = series.asarray()
            spacing = _imagej_voxel_size(tif)
    except (tifffile.TiffFileError, OSError, ValueError, KeyError, IndexError) as exc:
        raise InputError(f"{path}: not a readable TIFF ({exc})") from exc
    shape = tuple(data.shape)
    keep = [i for i, s in enumerate(shape) if s != 1]
    kept_axes = "".join(axes[i] for i in keep) if len(axes) == len(shape) else ""
    data = data.reshape([shape[i] for i in keep])
    if any(a in "CS" for a in kept_axes):
        raise InputError(
            f"{path}: shape {shape} (axes {axes}) has a channel axis; "
            "save one channel per file as (z,y,x) or (y,x)"
        )
    if data.ndim not in (2, 3):
        raise InputError(f"{path}: shape {shape} is not a 2D (y,x) or 3D (z,y,x) image")
    if spacing is not None and "".join(a for a in kept_axes if a in "ZYX") != kept_axes:
        spacing = None  # the axes are not plain z/y/x; do not guess which spacing is which
    voxel_size = None
    if spacing is not None:
        voxel_size = spacing[-data.ndim :] if data.ndim == 3 else spacing[1:]
    return data, voxel_size


def _imagej_voxel_size(tif: Any) -> tuple[float, float, float] | None:
    """(z, y, x) in the ImageJ unit from its spacing and resolution tags; None if not ImageJ."""
    if not tif.is_imagej:
        return None
    meta = tif.imagej_metadata or {}
    page = tif.pages[0]

    def size(tag_name: str) -> float:
        tag = page.tags.get(tag_name)
        if tag is None:
            return 1.0
        num, den = tag.value
        return float(den) / float(num) if num else 1.0

    z = float(meta.get("spacing", 1.0) or 1.0)
    return (z, size("YResolution"), size("XResolution"))


def _read_tiff_volume(path: Path) -> Volume:
    image, voxel_size = _read_tiff(path)
    masks = None
    for suffix in TIFF_SUFFIXES:
        masks_path = path.with_name(f"{path.stem}{MASKS_SUFFIX}{suffix}")
        if masks_path.is_file():
            masks, _ = _read_tiff(masks_path)
            if masks.shape != image.shape:
                raise InputError(
                    f"{masks_path}: masks shape {masks.shape} differs from image shape "
                    f"{image.shape} of {path.name}"
                )
            if not np.issubdtype(masks.dtype, np.integer):
                raise InputError(f"{masks_path}: masks must be integer labels, got {masks.dtype}")
            break
    return Volume(name=path.stem, image=image, masks=masks, voxel_size=voxel_size)
