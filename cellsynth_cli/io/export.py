"""OME-Zarr volumes to TIFF: NAME.tif + NAME_masks.tif with the voxel size in ImageJ metadata.

For Fiji (which opens ImageJ hyperstacks with their calibration) and for tools that read
Cellpose-style folders. Our own stages read such folders back, voxel size included.
ImageJ stores 8/16-bit integers and 32-bit floats only: other image types become float32,
masks uint16 (float32 beyond 65535 labels, exact up to 2**24).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cellsynth_cli import io
from cellsynth_cli.errors import InputError

IMAGEJ_EXACT_FLOAT_LABELS = 2**24  # float32 holds every integer up to here


def _imagej_image(array: np.ndarray) -> np.ndarray:
    if array.dtype in (np.uint8, np.uint16, np.float32):
        return array
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.min() >= 0 and array.max() <= 65535:
        return array.astype(np.uint16)
    return array.astype(np.float32)


def _imagej_masks(masks: np.ndarray, where: str) -> np.ndarray:
    top = int(masks.max()) if masks.size else 0
    if top <= np.iinfo(np.uint16).max:
        return masks.astype(np.uint16)
    if top <= IMAGEJ_EXACT_FLOAT_LABELS:
        return masks.astype(np.float32)
    raise InputError(f"{where}: {top} labels do not fit an ImageJ TIFF (at most 2**24)")


def _write_imagej(path: Path, data: np.ndarray, voxel_size: tuple[float, ...] | None) -> None:
    import tifffile

    metadata: dict = {"axes": "ZYX"[-data.ndim :]}
    resolution = None
    if voxel_size:  # an unknown voxel size is left uncalibrated, not called 1 um
        vs = tuple(float(v) for v in voxel_size)
        metadata["unit"] = "um"
        if data.ndim == 3:
            metadata["spacing"] = vs[0]
        resolution = (1.0 / vs[-1], 1.0 / vs[-2])
    tifffile.imwrite(path, data, imagej=True, resolution=resolution, metadata=metadata)


def write_tiff_volume(directory: Path, volume: io.Volume, overwrite: bool = False) -> list[Path]:
    """DIR/NAME.tif (the image, or the sketch of a simulated volume) and DIR/NAME_masks.tif.

    Both are written to hidden temporaries first; the masks are renamed into place before
    the image, so a reader never sees an image without its masks.
    """
    directory = Path(directory)
    image = volume.image if volume.image is not None else volume.sketch
    if image is None:
        raise InputError(f"{volume.name}: no image or sketch to export")
    targets = [(directory / f"{volume.name}.tif", _imagej_image(np.asarray(image)))]
    if volume.masks is not None:
        masks = _imagej_masks(volume.masks, volume.name)
        targets.insert(0, (directory / f"{volume.name}{io.MASKS_SUFFIX}.tif", masks))
    for target, _ in targets:
        if target.exists() and not overwrite:
            raise InputError(f"{target} already exists (pass --overwrite to replace it)")
    # masks left from an earlier export would be paired with this image by every reader
    stale = directory / f"{volume.name}{io.MASKS_SUFFIX}.tif"
    if volume.masks is None and stale.exists():
        if not overwrite:
            raise InputError(f"{stale} already exists (pass --overwrite to replace it)")
        stale.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    temporaries = [(directory / f".{t.name}.tmp-{token}", t, data) for t, data in targets]
    try:
        for tmp, _, data in temporaries:
            _write_imagej(tmp, data, volume.voxel_size)
        for tmp, target, _ in temporaries:
            os.replace(tmp, target)
    except BaseException as exc:
        for tmp, _, _ in temporaries:
            tmp.unlink(missing_ok=True)
        if io.is_enospc(exc):
            raise InputError(f"no space left on device while writing {directory}") from exc
        raise
    return [t for t, _ in reversed(targets)]


def export_tiff(
    source: Path,
    out_dir: Path,
    overwrite: bool = False,
    on_volume: Callable[[str], None] | None = None,
) -> list[dict]:
    """Every volume of SOURCE as TIFF files in OUT_DIR; refuses before any work if one exists."""
    paths = io.list_volumes(source)
    if Path(out_dir).resolve() == Path(source).resolve():
        raise InputError(f"-o {out_dir} is the source directory; choose another")
    if not overwrite:
        for path in paths:
            name = io.volume_name(path)
            for suffix in ("", io.MASKS_SUFFIX):
                target = Path(out_dir) / f"{name}{suffix}.tif"
                if target.exists():
                    raise InputError(f"{target} already exists (pass --overwrite to replace it)")
    results = []
    for path in paths:
        volume = io.read_volume(path)
        written = write_tiff_volume(out_dir, volume, overwrite=overwrite)
        results.append(
            {
                "name": volume.name,
                "files": [str(p) for p in written],
                "voxel_size": list(volume.voxel_size) if volume.voxel_size else None,
            }
        )
        if on_volume:
            on_volume(volume.name)
    return results
