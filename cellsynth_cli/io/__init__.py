"""Volumes on disk: OME-Zarr (NGFF 0.5, zarr v3) groups in and out, TIFF in.

One volume is one group `DIR/NAME.zarr`: the intensity image as array `0` (the sketch when
there is no image, so viewers show something), the float32 sketch as array `sketch`, instance
masks as the label image `labels/cells`, provenance under the group attribute `cellsynth`.
Writes are atomic: a hidden temporary sibling is renamed into place.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import math
import os
import secrets
import shutil
import sys
from collections.abc import Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth_cli.errors import InputError

NGFF_VERSION = "0.5"
TIFF_SUFFIXES = (".tif", ".tiff")
MASKS_SUFFIX = "_masks"
LABEL_NAME = "cells"
SIMULATE_STAGE = "simulate"

# Errors that zarr, json and the file system raise for a missing or mangled group; zarr's own
# errors are ValueErrors, a garbage zarr.json is a JSONDecodeError (also a ValueError).
_ZARR_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError)


@dataclass
class Volume:
    """One image volume with its optional instance masks, sketch, voxel size and provenance."""

    name: str
    image: np.ndarray | None = None
    masks: np.ndarray | None = None
    sketch: np.ndarray | None = None
    voxel_size: tuple[float, ...] | None = None
    provenance: dict = field(default_factory=dict)

    def _first_array(self) -> np.ndarray:
        for array in (self.image, self.sketch, self.masks):
            if array is not None:
                return array
        raise InputError(f"volume {self.name!r} holds no image, sketch or masks")

    @property
    def ndim(self) -> int:
        return self._first_array().ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._first_array().shape)


# ---------------------------------------------------------------------------------------------
# small public helpers


def volume_path(directory: Path, name: str) -> Path:
    """Where the volume NAME lives in an output directory."""
    return Path(directory) / f"{name}.zarr"


def volume_name(path: Path) -> str:
    """The volume name a path stands for: `a/x.zarr`, `a/x.tif` -> `x`."""
    path = Path(path)
    if path.suffix.lower() in (".zarr", *TIFF_SUFFIXES):
        return path.stem
    return path.name


def existing_outputs(directory: Path, names: Iterable[str]) -> list[Path]:
    """Which of DIR/NAME.zarr already exist (to refuse or resume before any work)."""
    paths = (volume_path(directory, name) for name in names)
    return [p for p in paths if p.exists()]


def outputs_to_keep(
    directory: Path, names: Iterable[str], overwrite: bool, resume: bool
) -> set[str]:
    """Names whose DIR/NAME.zarr exists and is kept (--resume). Refuses before any work when
    outputs exist and neither --resume nor --overwrite says what to do with them."""
    if overwrite and resume:
        raise InputError("--resume keeps existing outputs and --overwrite replaces them: give one")
    existing = existing_outputs(directory, names)
    if not existing or overwrite:
        return set()
    if not resume:
        raise InputError(
            f"{directory} already holds {len(existing)} of the outputs (e.g. {existing[0].name}); "
            "pass --resume to keep them and make the rest, or --overwrite to replace them"
        )
    return {volume_name(p) for p in existing}


def file_checksum(path: Path) -> str:
    """SHA-256 of a file (models are identified by it across processes and machines)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_temporaries(directory: Path, names: Iterable[str]) -> None:
    """Delete the hidden temporaries of NAME.zarr that a killed writer left behind (and the
    backup of a replaced volume, once the new one is in place)."""
    for name in names:
        target = volume_path(directory, name)
        for tmp in Path(directory).glob(f".{target.name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        if target.exists():
            for old in Path(directory).glob(f".{target.name}.old-*"):
                shutil.rmtree(old, ignore_errors=True)


def written_by_run(directory: Path, name: str, run: str) -> Path | None:
    """DIR/NAME.zarr if run RUN (the `run` token in its provenance) already wrote it.

    A task re-run after its worker died may find its volume already in place: it returns it
    instead of writing it a second time.
    """
    path = volume_path(directory, name)
    if path.exists() and read_provenance(path).get("run") == run:
        return path
    return None


def provenance(stage: str, **fields: Any) -> dict:
    """The provenance record a stage stores with each volume it writes."""
    from cellsynth_cli import __version__

    return {
        "stage": stage,
        "version": __version__,
        "command": " ".join(sys.argv),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
    }


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for zarr attributes (numpy scalars, arrays, tuples and paths converted)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise TypeError(f"provenance value {value!r} of type {type(value).__name__} is not JSON")


# ---------------------------------------------------------------------------------------------
# validation


def _check_volume(volume: Volume, where: str) -> None:
    """Refuse shapes, dtypes and values that would make a broken or misleading volume."""
    arrays = {
        k: a
        for k, a in (("image", volume.image), ("sketch", volume.sketch), ("masks", volume.masks))
        if a is not None
    }
    if not arrays:
        raise InputError(f"{where}: volume has no image, sketch or masks")
    shapes = {k: tuple(a.shape) for k, a in arrays.items()}
    for key, array in arrays.items():
        if array.ndim not in (2, 3):
            raise InputError(
                f"{where}: {key} must be 2D (y,x) or 3D (z,y,x), got shape {shapes[key]}"
            )
        if 0 in array.shape:
            raise InputError(f"{where}: {key} is empty, shape {shapes[key]}")
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{k} {s}" for k, s in shapes.items())
        raise InputError(f"{where}: arrays differ in shape: {listed}")
    for key in ("image", "sketch"):
        array = arrays.get(key)
        if array is None:
            continue
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise InputError(f"{where}: {key} has non-numeric dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
            raise InputError(f"{where}: {key} contains NaN or infinite values")
    masks = arrays.get("masks")
    if masks is not None:
        if not np.issubdtype(masks.dtype, np.integer):
            raise InputError(f"{where}: masks must have an integer dtype, got {masks.dtype}")
        if masks.min() < 0:
            raise InputError(f"{where}: masks contain negative labels (min {masks.min()})")
        if int(masks.max()) > np.iinfo(np.uint32).max:
            raise InputError(f"{where}: masks hold labels beyond uint32 (max {masks.max()})")
    if volume.voxel_size is not None:
        ndim = next(iter(arrays.values())).ndim
        vs = tuple(volume.voxel_size)
        if len(vs) != ndim or not all(math.isfinite(float(v)) and float(v) > 0 for v in vs):
            raise InputError(
                f"{where}: voxel_size {vs} must hold {ndim} positive numbers, one per axis"
            )


# ---------------------------------------------------------------------------------------------
# writing


def _axes(ndim: int) -> list[dict]:
    names = "zyx"[-ndim:]
    return [{"name": n, "type": "space", "unit": "micrometer"} for n in names]


def _multiscales(name: str, ndim: int, voxel_size: tuple[float, ...]) -> list[dict]:
    return [
        {
            "name": name,
            "axes": _axes(ndim),
            "datasets": [
                {
                    "path": "0",
                    "coordinateTransformations": [
                        {"type": "scale", "scale": [float(v) for v in voxel_size]}
                    ],
                }
            ],
        }
    ]


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    # ~64 planes along z and 256x256 in-plane: small enough for viewers, few files on disk.
    limits = (64, 256, 256)[-len(shape) :]
    return tuple(min(s, c) for s, c in zip(shape, limits, strict=True))


def _mask_dtype(masks: np.ndarray) -> np.dtype:
    return np.dtype(np.uint32 if int(masks.max()) > np.iinfo(np.uint16).max else np.uint16)


def _write_group(root: Path, volume: Volume) -> None:
    """Write the whole volume into a fresh group at `root` (the temporary).

    zarr 3 writes chunks as asyncio tasks. Its sync API runs them on zarr's shared background
    loop, where a failed write leaves the other chunk writes of the array running: they wrote
    into the temporary after write_volume had deleted it (so it came back) and were destroyed
    pending at exit ("Task was destroyed but it is pending!"). A private loop under asyncio.run
    returns, or raises, only once every task has ended and its writer threads are joined.
    """
    _run_to_the_end(_write_group_async(root, volume))


def _run_to_the_end(coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` on a private event loop; return only when nothing it started still runs."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)  # the usual case: no loop in this thread
        return
    # this thread already runs a loop (a notebook): run ours in a helper thread, and wait for
    # it to end even when interrupted, so nothing writes after the caller has cleaned up
    with ThreadPoolExecutor(1, thread_name_prefix="cellsynth-write") as pool:
        pool.submit(asyncio.run, coro).result()


async def _write_group_async(root: Path, volume: Volume) -> None:
    from zarr.api.asynchronous import open_group

    ndim = volume.ndim
    shape = volume.shape
    voxel_size = tuple(float(v) for v in (volume.voxel_size or (1.0,) * ndim))
    dims = tuple("zyx"[-ndim:])
    multiscales = _multiscales(volume.name, ndim, voxel_size)

    async def put(group: Any, name: str, data: np.ndarray) -> None:
        array = await group.create_array(
            name,
            shape=shape,
            dtype=data.dtype,
            chunks=_chunks(shape),
            dimension_names=dims,
        )
        await array.setitem(Ellipsis, data)

    group = await open_group(store=str(root), mode="w-", zarr_format=3)
    await group.update_attributes(
        {
            "ome": {"version": NGFF_VERSION, "multiscales": multiscales},
            "cellsynth": to_jsonable(volume.provenance),
        }
    )
    sketch = None if volume.sketch is None else np.asarray(volume.sketch, dtype=np.float32)
    intensity = volume.image if volume.image is not None else sketch
    if intensity is None:
        raise InputError(f"{root}: volume {volume.name!r} has masks but no image or sketch")
    await put(group, "0", np.asarray(intensity))
    if sketch is not None:
        await put(group, "sketch", sketch)
    if volume.masks is not None:
        labels = await group.create_group(
            "labels", attributes={"ome": {"version": NGFF_VERSION, "labels": [LABEL_NAME]}}
        )
        cells = await labels.create_group(
            LABEL_NAME,
            attributes={
                "ome": {
                    "version": NGFF_VERSION,
                    "image-label": {"version": NGFF_VERSION, "source": {"image": "../../"}},
                    "multiscales": multiscales,
                }
            },
        )
        await put(cells, "0", volume.masks.astype(_mask_dtype(volume.masks), copy=False))


def is_enospc(exc: BaseException) -> bool:
    # zarr may wrap the store's OSError; walk the cause chain.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_volume(directory: Path, volume: Volume, overwrite: bool = False) -> Path:
    """Write `volume` as DIR/NAME.zarr atomically; refuse an existing one unless `overwrite`."""
    directory = Path(directory)
    target = volume_path(directory, volume.name)
    _check_volume(volume, str(target))
    if target.exists() and not overwrite:
        raise InputError(f"{target} already exists (pass --overwrite to replace it)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output directory {directory}: {exc.strerror}") from exc

    token = secrets.token_hex(4)
    tmp = directory / f".{target.name}.tmp-{token}"
    try:
        _write_group(tmp, volume)
        _move_into_place(tmp, target, token, overwrite)
    except BaseException as exc:
        # Never leave a half-written temporary behind, whatever went wrong.
        shutil.rmtree(tmp, ignore_errors=True)
        if is_enospc(exc):
            raise InputError(f"no space left on device while writing {target}") from exc
        raise
    return target


@contextmanager
def atomic_file(path: Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary path to write PATH's content to; renamed over PATH only when the block
    ends without error (an existing PATH is refused unless `overwrite`)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists (pass --overwrite to replace it)")
    if path.is_dir():
        raise InputError(f"{path} is a directory, expected a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create directory {path.parent}: {exc.strerror}") from exc
    tmp = path.with_name(f".{path.stem}.tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_enospc(exc):
            raise InputError(f"no space left on device while writing {path}") from exc
        raise


def write_text(path: Path, text: str, overwrite: bool = False) -> Path:
    """Write a small text file (a report, JSON) atomically."""
    with atomic_file(path, overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)


def _move_into_place(tmp: Path, target: Path, token: str, overwrite: bool) -> None:
    """Rename the finished temporary to `target`; an old target is kept until the new one is in."""
    if not target.exists():
        try:
            os.rename(tmp, target)
            return
        except OSError as exc:
            # Only "someone wrote the target between our check and now" falls through.
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    if not overwrite:
        raise InputError(f"{target} already exists (pass --overwrite to replace it)")
    backup = target.with_name(f".{target.name}.old-{token}")
    os.rename(target, backup)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(backup, target)  # put the old volume back: never leave neither
        raise
    if backup.is_dir():
        shutil.rmtree(backup, ignore_errors=True)
    else:
        backup.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# reading


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
    _check_volume(volume, str(path))
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
