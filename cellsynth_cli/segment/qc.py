"""`segment qc`: phantom and vanished cells of synthetic volumes, judged by a trained
segmenter or the classical one, with the failed volumes moved aside."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cellsynth_cli import io
from cellsynth_cli.defaults import DEVICE
from cellsynth_cli.errors import InputError, check_choice
from cellsynth_cli.measure.matching import match_counts
from cellsynth_cli.measure.qc import phantom_vanished
from cellsynth_cli.segment import model as segmenter
from cellsynth_cli.segment.config import JUDGE, JUDGES, MAX_SHARE, MODE, MODES
from cellsynth_cli.segment.model import segment
from cellsynth_cli.segment.slices import z_anisotropy


@dataclass(frozen=True)
class QCJob:
    """One synthetic volume to check against its own masks (in-process or on a worker)."""

    model_dir: Path | None  # None: the classical judge
    model_checksum: str
    path: Path
    mode: str
    device: str


def qc_one(job: QCJob) -> dict:
    """Phantom and vanished fractions of one synthetic volume (no file is written)."""
    volume = io.read_volume(job.path)
    if volume.image is None or volume.masks is None:
        raise InputError(f"{job.path}: QC needs a synthetic image with its simulated masks")
    if job.model_dir is None:
        counts = phantom_vanished(volume.image, volume.masks, volume.voxel_size)
    else:
        model, config = segmenter.cached(job.model_dir, job.model_checksum, job.device)
        anisotropy = z_anisotropy(volume.voxel_size)
        predicted = segment(model, config, volume.image, job.mode, anisotropy)[0]
        counts = match_counts(predicted, volume.masks)
    return {"name": volume.name, "path": str(job.path), **counts}


def quality_control(
    model_dir: Path | None,
    data: Path,
    max_phantom: float = MAX_SHARE,
    max_vanished: float = MAX_SHARE,
    move_failed: Path | None = None,
    on_volume: Callable[[str], None] | None = None,
    device: str = DEVICE,
    mode: str = MODE,
    cluster: str | None = None,
    judge: str = JUDGE,
) -> dict:
    """Segment each synthetic image; compare with its own simulated masks (IoU >= 0.5).

    judge "model": the Cellpose of model_dir segments; "classical": the classical segmenter
    (local threshold + watershed at the masks' own cell size; no model, no labels, so an
    annotation-free pipeline can clean its training set with it).

    3D volumes are segmented as `predict` does with the same mode, so QC judges the data
    the way the segmenter will be used. One task per volume on a Dask cluster with `cluster`
    (see cluster.py); failed volumes are moved here, after all are checked.

    phantom: predicted cells with no simulated partner (made from noise);
    vanished: simulated cells the segmenter cannot find (e.g. dim cells the DDPM erased).
    """
    from cellsynth_cli.runtime import cluster as dask_cluster

    check_choice(mode, MODES, "--mode")
    check_choice(judge, JUDGES, "--judge")
    dask_cluster.parse_cluster(cluster)
    if judge == "classical":
        model_dir, checksum = None, ""
    else:
        model_dir = Path(model_dir)
        checksum = segmenter.checked_for_a_run(model_dir)
    paths = io.list_volumes(data)
    jobs = [QCJob(model_dir, checksum, path, mode, device) for path in paths]
    rows = dask_cluster.run_per_volume(
        qc_one,
        jobs,
        [io.volume_name(path) for path in paths],
        cluster,
        Path(data),
        "qc",
        on_done=lambda row: on_volume(row["name"]) if on_volume else None,
        writes=False,
    )
    rows.sort(key=lambda r: r["name"])
    for row in rows:
        row["passed"] = row["phantom"] <= max_phantom and row["vanished"] <= max_vanished
    failed = [r for r in rows if not r["passed"]]
    if move_failed is not None and failed:
        move_failed.mkdir(parents=True, exist_ok=True)
        for r in failed:
            target = move_failed / Path(r["path"]).name
            if target.exists():
                raise InputError(f"{target} exists; not moving {r['path']} over it")
            shutil.move(r["path"], target)
            r["moved_to"] = str(target)
    return {
        "volumes": rows,
        "passed": [r["name"] for r in rows if r["passed"]],
        "failed": [r["name"] for r in failed],
        "max_phantom": max_phantom,
        "max_vanished": max_vanished,
        "judge": judge,
    }
