"""Writing: a volume as an OME-Zarr (NGFF 0.5, zarr v3) group, a small text file; both atomic
(a hidden temporary sibling renamed into place, removed on any error)."""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import shutil
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth_cli.errors import InputError
from cellsynth_cli.io.volume import LABEL_NAME, NGFF_VERSION, Volume, check_volume, volume_path


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
    check_volume(volume, str(target))
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
