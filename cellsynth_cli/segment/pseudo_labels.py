"""Pseudo-labels: a trained segmenter's masks of unlabelled real images, with the cells it is
sure of marked, and the training crops cut from them (self-training, docs/method.md).

A cell is *confident* when the segmenter finds it again in the flipped image (IoU of the two
masks at least `min_iou`) and its size is within [min_size, max_size] typical cells (a disc
or ball of the segmenter's diameter). The other predicted cells are *ignored*, not treated
as background: a crop keeps them in its masks and names them in its provenance
(slices.IGNORED), and training gives their pixels no loss (cellpose_compat.ignore_aware_loss).
A crop that may only hold confident cells would not do: in a dense 3D stack every crop holds
some unconfident fragment, so round 2 would get none.
Each image's pseudo-label volume keeps every predicted cell, with the confident labels in
its provenance, so it opens in napari like any prediction. With mirror_only = "ignored" it
also holds the regions that only the mirrored image's masks call cells (named in its
provenance under MIRROR_ONLY), so crops ignore them instead of teaching them as background.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellsynth_cli import io
from cellsynth_cli.defaults import DEVICE
from cellsynth_cli.errors import InputError
from cellsynth_cli.measure.matching import match
from cellsynth_cli.runtime.per_volume import run_stage
from cellsynth_cli.segment import model as segmenter
from cellsynth_cli.segment.config import (
    MIN_SIZE_FRACTION,
    MODE,
    PSEUDO_LABEL_MATCH_BRIGHTNESS,
    PSEUDO_LABELS,
    PseudoLabelling,
)
from cellsynth_cli.segment.model import (
    min_cell_size,
    segment,
)
from cellsynth_cli.segment.slices import IGNORED, NORMALISED, z_anisotropy

STAGE = "pseudo-label"
MIRROR_ONLY = "mirror_only"  # provenance: labels of the regions only the mirrored masks hold


@dataclass(frozen=True)
class PseudoLabelJob:
    """One real image to pseudo-label: everything a Dask worker needs."""

    model_dir: Path
    model_checksum: str
    image: Path
    name: str
    out_dir: Path
    settings: PseudoLabelling
    mode: str
    device: str
    run: str
    min_size_fraction: float | None = None  # None: MIN_SIZE_FRACTION for the image's dims


def flipped(image: np.ndarray) -> np.ndarray:
    """The image mirrored in y and x (z stays: the slices keep their order)."""
    return image[..., ::-1, ::-1]


def confident_labels(
    masks: np.ndarray, again: np.ndarray, smallest: int, largest: int, min_iou: float
) -> list[int]:
    """Labels of MASKS found again in AGAIN with IoU >= MIN_IOU, SMALLEST..LARGEST pixels."""
    sizes = np.bincount(masks.ravel())
    matched = match(masks, again, min_iou).matched_pred
    return sorted(int(label) for label in matched if smallest <= sizes[label] <= largest)


def pseudo_label_one(job: PseudoLabelJob) -> dict:
    """Segment one image and its mirror; write the masks with the confident labels noted."""
    done = io.written_by_run(job.out_dir, job.name, job.run)
    if done is not None:
        return counts(job.name, io.read_provenance(done))
    volume = io.read_volume(job.image)
    if volume.image is None:
        raise InputError(f"{job.image}: no intensity image to pseudo-label")
    model, config = segmenter.cached(job.model_dir, job.model_checksum, job.device)
    anisotropy = z_anisotropy(volume.voxel_size)
    ndim = volume.image.ndim
    # the masks predict would write: fragments under the size filter are background there
    fraction = job.min_size_fraction
    if fraction is None:
        fraction = MIN_SIZE_FRACTION[ndim]
    how = (job.mode, anisotropy, fraction, PSEUDO_LABEL_MATCH_BRIGHTNESS)  # see config.py
    masks = segment(model, config, volume.image, *how)[0]
    mirrored = segment(model, config, flipped(volume.image), *how)[0]
    again = flipped(mirrored)
    s = job.settings
    size = lambda fraction: min_cell_size(config["diameter"], ndim, anisotropy, fraction)  # noqa: E731
    confident = confident_labels(masks, again, size(s.min_size), size(s.max_size), s.min_iou)
    n_cells = int(len(np.unique(masks)) - 1)
    extra = {}
    if s.mirror_only == "ignored":
        masks, extra[MIRROR_ONLY] = with_mirror_only_regions(masks, again)
    record = io.provenance(
        STAGE,
        model=str(job.model_dir),
        source=str(job.image),
        n_cells=n_cells,
        confident=confident,
        diameter=float(config["diameter"]),
        run=job.run,
        **extra,
    )
    io.write_volume(
        job.out_dir,
        io.Volume(job.name, volume.image, masks, voxel_size=volume.voxel_size, provenance=record),
        overwrite=True,
    )
    return counts(job.name, record)


def with_mirror_only_regions(masks: np.ndarray, again: np.ndarray) -> tuple[np.ndarray, list]:
    """MASKS plus, as new labels after its own, the connected regions that only AGAIN (the
    mirrored image's masks) calls cells; they are never confident, so crops ignore them
    rather than teach them as background. Returns the masks and the new labels."""
    regions, n = ndimage.label((again > 0) & (masks == 0))
    first = int(masks.max()) + 1
    out = masks.astype(np.uint32)
    out[regions > 0] = regions[regions > 0] + first - 1
    return out, list(range(first, first + n))


def counts(name: str, record: dict) -> dict:
    """A pseudo-label volume's row: its cells and confident cells (from its provenance)."""
    return {"name": name, "n_cells": record["n_cells"], "n_confident": len(record["confident"])}


def pseudo_label(
    model_dir: Path,
    images: Path,
    out: Path,
    settings: PseudoLabelling = PSEUDO_LABELS,
    mode: str = MODE,
    resume: bool = False,
    overwrite: bool = False,
    device: str = DEVICE,
    cluster: str | None = None,
    on_volume: Callable[[str], None] | None = None,
    min_size_fraction: float | None = None,
) -> list[dict]:
    """Pseudo-label every image of IMAGES into OUT (one volume per image, see the module);
    objects under MIN_SIZE_FRACTION of a typical cell are dropped first, as predict does."""
    settings.check()
    paths = io.list_volumes(images)
    names = [io.volume_name(p) for p in paths]
    io.outputs_to_keep(out, names, overwrite, resume)
    checksum = segmenter.checked_for_a_run(model_dir)
    rows = run_stage(
        STAGE,
        names,
        out,
        lambda i, name, run: PseudoLabelJob(
            model_dir,
            checksum,
            paths[i],
            name,
            out,
            settings,
            mode,
            device,
            run,
            min_size_fraction,
        ),  # fmt: skip
        pseudo_label_one,
        cluster,
        overwrite,
        resume,
        on_done=lambda result: on_volume(result["name"]) if on_volume else None,
    )
    # a volume kept by --resume comes back as {"name", "skipped"}: its counts are on disk
    return [
        {**counts(r["name"], io.read_provenance(io.volume_path(out, r["name"]))), **r}
        if r.get("skipped")
        else r
        for r in rows
    ]


def crop_windows(
    masks: np.ndarray, confident: np.ndarray, side: int
) -> Iterator[tuple[slice, ...]]:
    """In-plane squares of SIDE (the whole z range), one centred on each confident cell whose
    centre no earlier square holds, shifted inside the image."""
    height, width = masks.shape[-2:]
    centres = ndimage.center_of_mass(masks > 0, masks, confident)
    taken = np.zeros((height, width), dtype=bool)
    for centre in centres:
        cy, cx = (int(round(c)) for c in centre[-2:])
        if taken[cy, cx]:
            continue
        y = min(max(cy - side // 2, 0), height - side)
        x = min(max(cx - side // 2, 0), width - side)
        taken[y : y + side, x : x + side] = True
        yield (slice(None),) * (masks.ndim - 2) + (slice(y, y + side), slice(x, x + side))


def training_crops(pseudo: io.Volume, tile_cells: float) -> list[io.Volume]:
    """Crops of a pseudo-label volume around its confident cells; the masks keep every cell
    inside, renumbered from 1, and the provenance names the ignored (unconfident) ones."""
    from skimage.segmentation import relabel_sequential

    from cellsynth_cli.segment.background import normalize_like_cellpose

    record = pseudo.provenance
    confident = np.asarray(record.get("confident", []), dtype=np.int64)
    if confident.size == 0:
        return []
    side = min(int(round(tile_cells * record["diameter"])), *pseudo.masks.shape[-2:])
    crops = []
    # Cellpose normalises each training image by its own percentiles; a crop full of nuclei
    # would be scaled unlike its source image, which is what Cellpose sees when it predicts
    image = normalize_like_cellpose(pseudo.image)
    for k, window in enumerate(crop_windows(pseudo.masks, confident, side)):
        masks, forward, _ = relabel_sequential(pseudo.masks[window].astype(np.uint32))
        inside = np.unique(pseudo.masks[window])
        ignored = inside[(inside > 0) & ~np.isin(inside, confident)]
        origin = {
            "source": pseudo.name,
            "window": _window_record(window),
            NORMALISED: True,
            IGNORED: [int(forward[label]) for label in ignored],
        }
        crops.append(
            io.Volume(
                f"{pseudo.name}-crop{k:03d}",
                np.ascontiguousarray(image[window]),
                masks,
                voxel_size=pseudo.voxel_size,
                provenance=io.provenance(STAGE, **origin),
            )
        )
    return crops


def _window_record(window: tuple[slice, ...]) -> list[list[int | None]]:
    return [[s.start, s.stop] for s in window]


def write_training_crops(pseudo: Path, out: Path, tile_cells: float, overwrite: bool) -> int:
    """The training crops of every pseudo-label volume of PSEUDO, one NAME-cropK.zarr each
    in OUT (a folder `segment train --data` reads); returns how many were written."""
    if Path(out).exists() and any(Path(out).iterdir()) and not overwrite:
        raise InputError(f"{out} is not empty (pass --overwrite to replace it)")
    n = 0
    for volume in io.read_volumes(pseudo):
        if "confident" not in volume.provenance:
            raise InputError(f"{pseudo}/{volume.name}: not a pseudo-label volume")
        for crop in training_crops(volume, tile_cells):
            io.write_volume(out, crop, overwrite=overwrite)
            n += 1
    return n
