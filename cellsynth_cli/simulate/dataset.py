"""The `simulate` stage: sketches + masks from a preset, or sketches from real labels."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellsynth_cli import io
from cellsynth_cli.defaults import SEED
from cellsynth_cli.errors import InputError
from cellsynth_cli.runtime import cluster as dask_cluster
from cellsynth_cli.runtime import memory
from cellsynth_cli.runtime.per_volume import run_stage
from cellsynth_cli.simulate.config import SimulationConfig
from cellsynth_cli.simulate.simulators import get_simulator
from cellsynth_cli.simulate.sketch_from_labels import sketch_from_labels

Progress = Callable[[str], None]  # called with a volume name when it is written

# Peak bytes per voxel of simulating and writing one volume, from the arrays each simulator
# allocates (checked with tracemalloc on 2D and 3D presets at two sizes each):
# - nuclei: masks uint32 4 + sketch float32 4 + foreground bool 1 + the int64 index of every
#   foreground voxel 8 (the candidate centres) = 17 when the foreground is the whole image;
#   an ellipsoid foreground's float64 temporaries (8 + 8 + 1) come earlier and peak no higher.
# - arabidopsis, tribolium: masks 4 + sketch 4 (their temporaries are per slab or per cell),
#   then writing adds a uint32 copy of the masks 4 and a bool finiteness map 1 = 13.
BYTES_PER_VOXEL = {"nuclei": 17, "arabidopsis": 13, "tribolium": 13}


@dataclass(frozen=True)
class VolumeJob:
    config: SimulationConfig
    name: str
    seed_sequence: np.random.SeedSequence
    out_dir: Path
    overwrite: bool
    preview: bool
    seed: int
    index: int
    run: str  # token of this run: a re-run task finds what an earlier attempt wrote


def volume_names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{i:04d}" for i in range(n)]


def _simulate_one(job: VolumeJob) -> dict:
    done = io.written_by_run(job.out_dir, job.name, job.run)
    if done is not None:
        return {"name": job.name, "path": str(done), "n_cells": io.read_provenance(done)["n_cells"]}
    rng = np.random.default_rng(job.seed_sequence)
    simulated = get_simulator(job.config.simulator)(job.config, rng)
    if simulated.masks.max() == 0:
        raise InputError(
            f"{job.name}: the simulation placed no cell; check shape/radius/n_cells settings"
        )
    volume = io.Volume(
        name=job.name,
        masks=simulated.masks,
        sketch=simulated.sketch,
        voxel_size=tuple(job.config.voxel_size),
        provenance=io.provenance(
            "simulate",
            preset=job.config.preset,
            seed=job.seed,
            index=job.index,
            config=job.config.to_dict(),
            run=job.run,
            **simulated.info,
        ),
    )
    path = io.write_volume(job.out_dir, volume, overwrite=job.overwrite)
    if job.preview:
        from cellsynth_cli.io.preview import save_sketch_preview

        save_sketch_preview(path.with_name(f"{job.name}_preview.png"), volume)
    return {"name": job.name, "path": str(path), **simulated.info}


def volume_bytes(config: SimulationConfig) -> int:
    """About how much memory simulating and writing one volume of `config` takes."""
    per_voxel = BYTES_PER_VOXEL.get(config.simulator, max(BYTES_PER_VOXEL.values()))
    return per_voxel * math.prod(config.shape)


def check_memory(config: SimulationConfig, at_once: int) -> None:
    """Refuse, before any work, volumes that this machine cannot hold `at_once` of (the
    volumes simulated at the same time here; unknown free memory is not refused)."""
    available = memory.available_bytes()
    one = volume_bytes(config)
    if available is None or one * at_once <= available:
        return
    shape = ",".join(str(s) for s in config.shape)
    need = f"needs about {memory.format_bytes(one)} of memory for one volume"
    fix = "use a smaller --shape"
    if at_once > 1:
        need += f", {memory.format_bytes(one * at_once)} for the {at_once} simulated at once"
        fix += " or fewer local workers"
    raise InputError(
        f"--shape {shape} {need}; this machine has {memory.format_bytes(available)} "
        f"available: {fix}"
    )


def _volumes_at_once(cluster: str | None, n_jobs: int) -> int:
    """How many volumes are in memory on this machine together (0: the cluster's own)."""
    spec = dask_cluster.parse_cluster(cluster)
    if spec is None:
        return 1
    if spec.kind == "local":
        return min(spec.workers, n_jobs)
    return 0  # workers of a remote scheduler: their memory is not this machine's


def _check_resumable(path: Path, config: SimulationConfig, seed: int) -> None:
    """A kept volume must come from the same preset settings and seed, or the set is mixed."""
    made = io.read_provenance(path)
    if made.get("seed") != seed or made.get("config") != io.to_jsonable(config.to_dict()):
        what = "seed" if made.get("seed") != seed else "settings (preset, --set, --shape)"
        raise InputError(
            f"--resume: {path} was simulated with other {what}; use the same options as the "
            "first run, another -o, or --overwrite"
        )


def simulate_dataset(
    config: SimulationConfig,
    n: int,
    out_dir: Path,
    seed: int = SEED,
    overwrite: bool = False,
    cluster: str | None = None,
    preview: bool = False,
    on_volume: Progress | None = None,
    resume: bool = False,
) -> list[dict]:
    """Simulate `n` volumes into OUT_DIR/<preset>_0000.zarr ...; returns one summary per volume.

    Volume i uses the i-th child of SeedSequence(seed): the same seed gives identical
    volumes in-process or on any Dask cluster (`cluster`, see cluster.py), and `resume` (skip
    finished volumes) gives the same set as one uninterrupted run.
    """
    if n <= 0:
        raise InputError(f"-n must be a positive number of volumes, got {n}")
    dask_cluster.parse_cluster(cluster)  # a bad --cluster is reported before any work
    children = np.random.SeedSequence(seed).spawn(n)
    return run_stage(
        "simulate",
        volume_names(config.preset, n),
        out_dir,
        lambda i, name, run: VolumeJob(
            config, name, children[i], out_dir, overwrite, preview, seed, i, run
        ),
        _simulate_one,
        cluster,
        overwrite,
        resume,
        check_kept=lambda path: _check_resumable(path, config, seed),
        check_jobs=lambda jobs: check_memory(config, _volumes_at_once(cluster, len(jobs))),
        on_kept=on_volume,
        on_done=lambda result: on_volume(result["name"]) if on_volume else None,
    )


def _kept_results(names: list[str], on_volume: Progress | None) -> list[dict]:
    """Summaries of outputs kept by --resume (they count as done for the progress bar)."""
    for name in names:
        if on_volume:
            on_volume(name)
    return [{"name": name, "skipped": True} for name in names]


def sketches_from_real(
    data_dir: Path,
    out_dir: Path,
    overwrite: bool = False,
    preview: bool = False,
    on_volume: Progress | None = None,
    resume: bool = False,
) -> list[dict]:
    """One sketch per real volume with instance labels, carrying the real masks along."""
    paths = io.list_volumes(data_dir)
    names = [io.volume_name(p) for p in paths]
    kept = io.outputs_to_keep(out_dir, names, overwrite, resume)
    results = _kept_results([name for name in names if name in kept], on_volume)
    for path in paths:
        if io.volume_name(path) in kept:
            continue
        real = io.read_volume(path)
        if real.masks is None:
            raise InputError(f"{path}: no instance masks (expected NAME_masks.tif or labels/cells)")
        if real.image is None:
            raise InputError(f"{path}: no intensity image to take the cell means from")
        try:
            sketch, info = sketch_from_labels(real.image, real.masks)
        except InputError as exc:
            raise InputError(f"{path}: {exc}") from None
        volume = io.Volume(
            name=real.name,
            masks=real.masks,
            sketch=sketch,
            voxel_size=real.voxel_size,
            provenance=io.provenance("simulate", preset="from-labels", source=str(path), **info),
        )
        written = io.write_volume(out_dir, volume, overwrite=overwrite)
        if preview:
            from cellsynth_cli.io.preview import save_sketch_preview

            save_sketch_preview(written.with_name(f"{real.name}_preview.png"), volume)
        results.append({"name": real.name, "path": str(written), **info})
        if on_volume:
            on_volume(real.name)
    return results
