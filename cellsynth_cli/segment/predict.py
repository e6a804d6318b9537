"""`segment predict` and `segment score`: instance masks of real images, and their scores
against ground truth."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellsynth_cli import io
from cellsynth_cli.defaults import DEVICE
from cellsynth_cli.errors import InputError, check_choice
from cellsynth_cli.measure.error_analysis import ERROR_KINDS, error_counts
from cellsynth_cli.measure.matching import segmentation_scores
from cellsynth_cli.runtime.per_volume import run_stage
from cellsynth_cli.segment import model as segmenter
from cellsynth_cli.segment.config import MATCH_BRIGHTNESS, MIN_SIZE_FRACTION, MODE, MODES
from cellsynth_cli.segment.model import segment
from cellsynth_cli.segment.slices import z_anisotropy


@dataclass(frozen=True)
class PredictJob:
    """One image to segment: everything a Dask worker needs."""

    model_dir: Path
    model_checksum: str
    image: Path
    name: str
    out_dir: Path
    mode: str
    device: str
    overwrite: bool
    run: str  # token of this run: a re-run task finds what an earlier attempt wrote
    min_size_fraction: float | None = None  # None: MIN_SIZE_FRACTION for the image's dims
    match_brightness: bool = MATCH_BRIGHTNESS


def predict_one(job: PredictJob) -> dict:
    """Segment one image into OUT_DIR/<name>.zarr (in-process or on a Dask worker)."""
    done = io.written_by_run(job.out_dir, job.name, job.run)
    if done is not None:
        return {"name": job.name, "n_cells": int(io.read_provenance(done)["n_cells"])}
    volume = io.read_volume(job.image)
    if volume.image is None:
        raise InputError(f"{job.image}: no intensity image to segment")
    model, config = segmenter.cached(job.model_dir, job.model_checksum, job.device)
    anisotropy = z_anisotropy(volume.voxel_size)
    fraction = job.min_size_fraction
    if fraction is None:
        fraction = MIN_SIZE_FRACTION[volume.image.ndim]
    masks, dimming = segment(
        model, config, volume.image, job.mode, anisotropy, fraction, job.match_brightness
    )
    settings = {"mode": job.mode, "anisotropy": anisotropy} if volume.image.ndim == 3 else {}
    settings["min_size_fraction"] = fraction
    settings["dimmed_by"] = round(dimming, 4)  # brightness matching (1: not dimmed)
    n_cells = int(len(np.unique(masks)) - 1)
    io.write_volume(
        job.out_dir,
        io.Volume(
            name=job.name,
            image=volume.image,
            masks=masks,
            voxel_size=volume.voxel_size,
            provenance=io.provenance(
                "segment-predict",
                model=str(job.model_dir),
                source=str(job.image),
                n_cells=n_cells,
                run=job.run,
                **settings,
            ),
        ),
        overwrite=job.overwrite,
    )
    return {"name": job.name, "n_cells": n_cells}


def predict(
    model_dir: Path,
    images: Path,
    out: Path,
    overwrite: bool = False,
    mode: str = MODE,
    on_volume: Callable[[str], None] | None = None,
    resume: bool = False,
    device: str = DEVICE,
    cluster: str | None = None,
    min_size_fraction: float | None = None,
    match_brightness: bool = MATCH_BRIGHTNESS,
) -> list[dict]:
    """Segment every image of IMAGES into OUT (the image with labels/cells).

    3D images: mode "3d" is Cellpose's 3D mode with anisotropy = z step / x step of the
    voxel size (1 when unknown); "stitch" joins 2D masks of the z slices. 2D: mode is unused.
    Objects smaller than MIN_SIZE_FRACTION of a typical cell are dropped (None: the default
    for the image's dimensionality, config.MIN_SIZE_FRACTION). MATCH_BRIGHTNESS: cells
    brighter than the model's training nuclei are redrawn from the image dimmed
    (brightness.py); the factor is in each output's provenance (dimmed_by).
    In this process, or one task per image on a Dask cluster (`cluster`, see cluster.py);
    Cellpose is loaded once per process, and only when something is left to segment.
    """
    from cellsynth_cli.runtime import cluster as dask_cluster

    check_choice(mode, MODES, "--mode")
    if min_size_fraction is not None and not 0.0 <= min_size_fraction < 1.0:
        raise InputError(f"--min-size-fraction must be in [0, 1), got {min_size_fraction}")
    dask_cluster.parse_cluster(cluster)
    paths = io.list_volumes(images)
    names = [io.volume_name(p) for p in paths]
    io.outputs_to_keep(out, names, overwrite, resume)  # refused outputs before the model check
    checksum = segmenter.checked_for_a_run(model_dir)
    return run_stage(
        "predict",
        names,
        out,
        lambda i, name, run: PredictJob(
            model_dir,
            checksum,
            paths[i],
            name,
            out,
            mode,
            device,
            overwrite,
            run,
            min_size_fraction,
            match_brightness,
        ),  # fmt: skip
        predict_one,
        cluster,
        overwrite,
        resume,
        on_done=lambda result: on_volume(result["name"]) if on_volume else None,
    )


def score(pred_dir: Path, ref_dir: Path) -> dict:
    """Dice / AP / F1 of every prediction with a same-named reference, their mean and sd, and
    where the errors are (error_analysis.error_counts, per volume and summed)."""
    pred = {io.volume_name(p): p for p in io.list_volumes(pred_dir)}
    ref = {io.volume_name(p): p for p in io.list_volumes(ref_dir)}
    names = sorted(set(pred) & set(ref))
    if not names:
        raise InputError(f"no volume names in common between {pred_dir} and {ref_dir}")
    rows = []
    for name in names:
        p, r = io.read_volume(pred[name]), io.read_volume(ref[name])
        if p.masks is None or r.masks is None:
            raise InputError(f"{name}: both --pred and --ref need instance masks")
        try:
            scores = segmentation_scores(p.masks, r.masks)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
        rows.append({"name": name, **scores, "errors": error_counts(p.masks, r.masks)})
    keys = ("dice", "ap@0.5", "ap@0.75", "precision", "recall", "f1")
    summary = {
        k: {
            "mean": float(np.mean([row[k] for row in rows])),
            "sd": float(np.std([row[k] for row in rows])),
        }
        for k in keys
    }
    return {
        "volumes": rows,
        "summary": summary,
        "errors": {k: sum(row["errors"][k] for row in rows) for k in ERROR_KINDS},
        "unpaired_pred": sorted(set(pred) - set(ref)),
        "unpaired_ref": sorted(set(ref) - set(pred)),
    }
