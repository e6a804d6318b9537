"""The `synthesize` stage: sketches -> realistic images that keep the simulated masks (SDEdit).

Each sketch is scaled to the model's [-1, 1], noised forward to t_start with q(x_t | x_0) and
denoised by the learned reverse process, tile-batched and blended at every step, then mapped
back to the real data's intensity range.
"""

from __future__ import annotations

import copy
import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from cellsynth_cli import io
from cellsynth_cli.ddpm.checkpoint import TrainedModel, load_model
from cellsynth_cli.ddpm.tiling import (
    AUTO_TILE_VOXELS,
    TiledPredictor,
    auto_tile,
    round_up,
    tile_grid,
)
from cellsynth_cli.defaults import DEVICE, SEED
from cellsynth_cli.diffusion import defaults
from cellsynth_cli.diffusion.conditioning import guided, is_conditional
from cellsynth_cli.diffusion.process import SAMPLERS, sample, sampling_timesteps
from cellsynth_cli.diffusion.schedule import make_schedule
from cellsynth_cli.errors import InputError
from cellsynth_cli.io.intensity import from_unit, model_to_unit, unit_to_model
from cellsynth_cli.runtime import model_cache
from cellsynth_cli.runtime.device import pick_device
from cellsynth_cli.runtime.per_volume import run_stage

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class SynthesisOptions:
    t_start: int = defaults.T_START
    # AUTO_STEPS: the sampler's default (defaults.default_steps); None: every step (the paper)
    steps: int | None = defaults.AUTO_STEPS
    sampler: str = defaults.SAMPLER  # auto: by the model's dimensionality
    tile: tuple[int, ...] | None = None  # None: whole volume up to AUTO_TILE_VOXELS
    overlap: tuple[int, ...] | None = None  # None: a quarter of the training patch
    batch: int = defaults.TILE_BATCH
    seed: int = SEED
    device: str = DEVICE
    precision: str = defaults.PRECISION  # auto: bf16 where native, else fp32
    guidance: float | None = None  # classifier-free guidance weight w; None: see below
    guidance_share: float = defaults.GUIDANCE_SHARE  # of the steps, noisiest first


def volume_seed(seed: int, name: str) -> int:
    """A per-volume seed from the run seed and the volume name: resuming changes nothing."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def check_options(options: SynthesisOptions, T: int) -> None:  # noqa: N803
    if options.sampler not in SAMPLERS:
        valid = ", ".join((defaults.SAMPLER, *SAMPLERS))
        raise InputError(f"--sampler must be one of {valid}, got {options.sampler}")
    if not 1 <= options.t_start <= T:
        raise InputError(f"--t-start must be in 1..{T}, got {options.t_start}")
    if options.steps is not None and not 1 <= options.steps <= options.t_start:
        raise InputError(f"--steps must be in 1..t_start ({options.t_start}), got {options.steps}")
    if options.precision not in PRECISIONS:
        raise InputError(
            f"--precision must be one of {', '.join(PRECISIONS)}, got {options.precision!r}"
        )
    if options.batch < 1:
        raise InputError(f"--batch must be >= 1, got {options.batch}")
    if not (math.isfinite(options.guidance) and options.guidance >= 0):
        raise InputError(f"--guidance must be a number >= 0, got {options.guidance}")
    if not 0.0 <= options.guidance_share <= 1.0:
        raise InputError(f"--guidance-share must be in 0..1, got {options.guidance_share}")


def with_defaults(model: TrainedModel, options: SynthesisOptions) -> SynthesisOptions:
    """options with what was left to the model filled in: the sampler (auto: by the model's
    dimensionality; every step: the paper's ddpm), its steps (capped at t_start: below them,
    every step) and guidance (defaults.GUIDANCE for a conditional model, 1 (none) for an
    unconditional one)."""
    sampler = options.sampler
    if sampler == defaults.SAMPLER:
        sampler = "ddpm" if options.steps is None else defaults.AUTO_SAMPLER[model.dims]
    steps = options.steps
    if steps == defaults.AUTO_STEPS:
        steps = min(defaults.default_steps(sampler), options.t_start)
    guidance = options.guidance
    if guidance is None:
        guidance = defaults.GUIDANCE if is_conditional(model.config) else 1.0
    return replace(options, sampler=sampler, steps=steps, guidance=guidance)


def check_conditioning(model: TrainedModel, options: SynthesisOptions) -> None:
    if options.guidance != 1.0 and not is_conditional(model.config):
        raise InputError(
            f"--guidance {options.guidance}: {model.path} is not a conditional model "
            "(train one with --condition pseudo-sketch)"
        )


def tiling_for(
    shape: tuple[int, ...], model: TrainedModel, options: SynthesisOptions
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(padded shape, tile, overlap): every axis padded to a multiple of the network's
    divisor and at least one tile; tiles no larger than the padded volume.

    Default tile: the whole volume up to AUTO_TILE_VOXELS, else the largest tiles within it.
    Default overlap: a quarter of the training patch (the network's context), capped by the
    tile.
    """
    m = model.multiples
    padded = tuple(round_up(s, k) for s, k in zip(shape, m, strict=True))
    patch = tuple(model.config["patch"])
    tile, overlap = options.tile, options.overlap
    for name, sizes in (("--tile", tile), ("--overlap", overlap)):
        if sizes is not None and len(sizes) not in (1, len(shape)):
            raise InputError(f"{name} {sizes} has {len(sizes)} sizes, the sketch is {len(shape)}D")
    if tile is not None:
        tile = tile * len(shape) if len(tile) == 1 else tile
        if any(t % k for t, k in zip(tile, m, strict=True)):
            raise InputError(f"--tile {tile}: the sizes must be multiples of {m}")
        tile = tuple(min(t, p) for t, p in zip(tile, padded, strict=True))
    if overlap is None:
        limit = tile or padded
        overlap = tuple(min(p, t) // 4 for p, t in zip(patch, limit, strict=True))
    elif len(overlap) == 1:
        overlap = overlap * len(shape)
    if tile is None:
        tile = auto_tile(padded, overlap, m, AUTO_TILE_VOXELS)
    # an axis covered by one tile has no overlap to honour
    if any(o < 0 or (o >= t and t < p) for o, t, p in zip(overlap, tile, padded, strict=True)):
        raise InputError(f"--overlap {overlap} must be >= 0 and smaller than the tile {tile}")
    return padded, tile, overlap


def tiles_per_call(options: SynthesisOptions, tile: tuple[int, ...]) -> int:
    """--batch, but automatic tiles keep one network call within AUTO_TILE_VOXELS."""
    if options.tile is not None:
        return options.batch
    return max(1, min(options.batch, AUTO_TILE_VOXELS // int(np.prod(tile))))


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 where the device computes it natively, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"


def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware: CUDA compute capability >= 8 (Ampere), CPUs with AVX512-BF16 or AMX.

    (oneDNN also runs bf16 on plain AVX512 CPUs, emulated: slower than fp32 there.)
    """
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_capability(device)[0] >= 8
        if device.type == "cpu":
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        pass
    return False


def check_dims(shape: tuple[int, ...], model: TrainedModel) -> None:
    if len(shape) != model.dims:
        raise InputError(f"this is a {model.dims}D model; the sketch is {len(shape)}D {shape}")


def synthesis_plan(
    shape: tuple[int, ...], model: TrainedModel, options: SynthesisOptions, device: torch.device
) -> dict:
    """How one volume will be computed (recorded in provenance, shown by the CLI)."""
    check_dims(shape, model)
    padded, tile, overlap = tiling_for(shape, model, options)
    return {
        "tile": list(tile),
        "overlap": list(overlap),
        "n_tiles": len(tile_grid(padded, tile, overlap)),
        "tiles_per_call": tiles_per_call(options, tile),
        "precision": resolve_precision(options.precision, device),
    }


def synthesize_volume(
    model: TrainedModel,
    sketch: np.ndarray,
    options: SynthesisOptions,
    seed: int,
    device: torch.device,
    on_step: Callable[[int], None] | None = None,
    condition: np.ndarray | None = None,
) -> np.ndarray:
    """One sketch in [0, 1] -> a synthetic image in the real data's intensity range.

    SKETCH is where the reverse process starts (noised to t_start). A conditional model
    also follows CONDITION (a sketch in [0, 1] of the same shape, usually the sketch itself)
    at every step, with options.guidance; an unconditional model ignores it.
    """
    check_dims(sketch.shape, model)
    options = with_defaults(model, options)
    check_conditioning(model, options)
    conditional = is_conditional(model.config)
    if conditional and condition is None:
        raise InputError(
            f"{model.path} is conditioned on sketches (trained with --condition "
            f"{model.config['condition']}); it needs a sketch to follow"
        )
    inputs = [sketch] + ([condition] if conditional else [])
    if any(not np.isfinite(a).all() for a in inputs):
        raise InputError("the sketch contains NaN or infinite values")
    if conditional and condition.shape != sketch.shape:
        raise InputError(f"the condition {condition.shape} and sketch {sketch.shape} differ")
    padded, tile, overlap = tiling_for(sketch.shape, model, options)
    pads = [(0, p - s) for s, p in zip(sketch.shape, padded, strict=True)]

    def to_model(array: np.ndarray) -> torch.Tensor:
        array = unit_to_model(np.clip(array, 0.0, 1.0))
        array = np.pad(array, pads, mode="reflect") if any(p[1] for p in pads) else array
        return torch.from_numpy(np.ascontiguousarray(array))[None, None].to(device)

    x0_guide = to_model(sketch)
    net = network_in(model.net, resolve_precision(options.precision, device))
    batch = tiles_per_call(options, tile)
    schedule = make_schedule(model.config.get("schedule", "cosine"), model.config.get("T", 1000))
    predictor = TiledPredictor(
        net, padded, tile, overlap, batch, device, to_model(condition) if conditional else None
    )
    if conditional:
        predictor = guided_predictor(predictor, net, options, schedule.T)
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        x0 = sample(
            predictor,
            x0_guide,
            options.t_start,
            schedule,
            options.steps,
            options.sampler,
            generator,
            on_step,
        )
    result = x0[0, 0].cpu().numpy()[tuple(slice(0, s) for s in sketch.shape)]
    norm = model.normalization
    return from_unit(model_to_unit(result), norm["low"], norm["high"])


def network_in(net: torch.nn.Module, precision: str) -> Callable:
    """NET as a function of fp32 tensors, computed in PRECISION.

    bf16 runs a bf16 copy of the weights rather than autocast: autocast keeps GroupNorm in
    fp32 and copies every feature map to fp32 and back around it (13 % of a 3D forward on
    CPU); PyTorch's bf16 GroupNorm kernel accumulates in fp32 anyway. Measured on a 3D
    forward (bench/bench_unet.py): faster than autocast, noise predictions within ~1.5 %.
    """
    if precision != "bf16":
        return net
    half = copy.deepcopy(net).to(torch.bfloat16)

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return half(x.to(torch.bfloat16), t).float()

    return forward


def guided_predictor(
    predictor: TiledPredictor,
    net: Callable,
    options: SynthesisOptions,
    T: int,  # noqa: N803
) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """PREDICTOR (over the plain conditional NET) guided with options.guidance on the first
    guidance_share of the timesteps, noisiest first; the conditional prediction alone (one
    network call, w = 1) on the rest."""
    timesteps = sampling_timesteps(options.t_start, options.steps, T)
    n_guided = math.ceil(options.guidance_share * len(timesteps))
    guided_t = set(timesteps[:n_guided])
    full = replace_net(predictor, guided(net, options.guidance))
    plain = replace_net(predictor, guided(net, 1.0))

    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        return full(x, t) if t in guided_t else plain(x, t)

    return eps


def replace_net(predictor: TiledPredictor, net: Callable) -> TiledPredictor:
    """The same tiles, weights and condition, another network."""
    twin = copy.copy(predictor)
    twin.net = net
    return twin


def _check_resumable(
    path: Path, model: TrainedModel, options: SynthesisOptions, n_steps: int
) -> None:
    """A kept volume must come from the same model and sampler settings, or the set is mixed."""
    made = io.read_provenance(path)
    now = {
        "model_checksum": model.checksum,
        "t_start": options.t_start,
        "steps": n_steps,
        "sampler": options.sampler,
        "seed": options.seed,
        "guidance": options.guidance,
        "guidance_share": options.guidance_share,
    }
    # sets made before guidance (or its share) existed: unguided (all steps)
    earlier = {"guidance": 1.0, "guidance_share": 1.0}
    differ = [key for key, value in now.items() if made.get(key, earlier.get(key)) != value]
    if differ:
        raise InputError(
            f"--resume: {path} was synthesized with another {', '.join(differ)}; use the same "
            "model and options as the first run, another -o, or --overwrite"
        )


@dataclass(frozen=True)
class VolumeJob:
    """One sketch to synthesize: everything a Dask worker needs, nothing it cannot pickle."""

    model: Path  # checkpoint file
    model_checksum: str
    sketch: Path
    name: str
    out_dir: Path
    options: SynthesisOptions
    n_steps: int
    overwrite: bool
    run: str  # token of this run: a re-run task finds what an earlier attempt wrote


def cached_model(path: Path, checksum: str, device: torch.device) -> TrainedModel:
    """The model of checkpoint PATH, loaded once per process and device (keyed by checksum)."""

    def load() -> TrainedModel:
        model = load_model(path, device)
        if model.checksum != checksum:
            raise InputError(f"{path} changed while synthesizing (checksum differs); start again")
        return model

    return model_cache.cached(("ddpm", checksum, str(device)), load)


def synthesize_one(
    job: VolumeJob,
    on_volume: Callable[[str, int, dict], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict:
    """Synthesize one sketch volume into OUT_DIR/<name>.zarr (in-process or on a worker)."""
    from cellsynth_cli.diffusion.unet import tune_cpu_allocator

    done = io.written_by_run(job.out_dir, job.name, job.run)
    if done is not None:
        return {"name": job.name, "path": str(done), "steps": job.n_steps}
    options = job.options
    device = pick_device(options.device)
    if device.type == "cpu":
        tune_cpu_allocator()  # keeps big feature maps resident: ~1.5x faster on CPU
    model = cached_model(job.model, job.model_checksum, device)
    volume = io.read_volume(job.sketch)
    if volume.sketch is None:
        raise InputError(f"{job.sketch}: no sketch in this volume (make one with `simulate`)")
    seed = volume_seed(options.seed, job.name)
    try:
        plan = synthesis_plan(volume.sketch.shape, model, options, device)
        if on_volume:
            on_volume(job.name, job.n_steps, plan)
        image = synthesize_volume(
            model, volume.sketch, options, seed, device, on_step, condition=volume.sketch
        )
    except InputError as exc:
        raise InputError(f"{job.sketch}: {exc}") from None
    out = io.Volume(
        name=job.name,
        image=image,
        masks=volume.masks,
        sketch=volume.sketch,
        voxel_size=volume.voxel_size,
        provenance=io.provenance(
            "synthesize",
            # a bundled model by its name: its install path differs from machine to machine
            model=model.provenance["name"] if model.provenance else str(model.path),
            model_checksum=model.checksum,
            model_step=model.step,
            t_start=options.t_start,
            steps=job.n_steps,
            sampler=options.sampler,
            seed=options.seed,
            guidance=options.guidance,
            guidance_share=options.guidance_share,
            conditional=is_conditional(model.config),
            volume_seed=seed,
            **plan,
            source=str(job.sketch),
            source_provenance=volume.provenance,
            run=job.run,
        ),
    )
    written = io.write_volume(job.out_dir, out, overwrite=job.overwrite)
    return {"name": job.name, "path": str(written), "steps": job.n_steps, **plan}


def synthesize_dataset(
    run: Path,
    sketches: Path,
    out_dir: Path,
    options: SynthesisOptions,
    resume: bool = False,
    overwrite: bool = False,
    on_volume: Callable[[str, int, dict], None] | None = None,
    on_step: Callable[[int], None] | None = None,
    cluster: str | None = None,
    on_done: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Synthesize every sketch volume of SKETCHES into OUT_DIR/<name>.zarr, with its masks.

    In this process (on_volume / on_step report each volume's steps), or one task per volume
    on a Dask cluster (`cluster`, see cluster.py; on_done reports each finished volume). The
    noise of a volume depends only on the seed and its name, so every mode gives the same
    volumes.
    """
    from cellsynth_cli.runtime import cluster as dask_cluster

    dask_cluster.parse_cluster(cluster)  # a bad --cluster is reported before any work
    # with a cluster the workers load their own copy; this one only checks the options
    device = pick_device(options.device) if cluster is None else torch.device("cpu")
    model = load_model(run, device)
    if cluster is None:
        model_cache.keep(("ddpm", model.checksum, str(device)), model)
    schedule_T = int(model.config.get("T", 1000))  # noqa: N806
    options = with_defaults(model, options)
    check_options(options, schedule_T)
    check_conditioning(model, options)
    paths = io.list_volumes(sketches)
    n_steps = len(sampling_timesteps(options.t_start, options.steps, schedule_T))
    # in this process each volume also reports its steps; on a cluster only its completion
    task = (
        synthesize_one
        if cluster
        else functools.partial(synthesize_one, on_volume=on_volume, on_step=on_step)
    )
    return run_stage(
        "synthesize",
        [io.volume_name(p) for p in paths],
        out_dir,
        lambda i, name, run: VolumeJob(
            model.path, model.checksum, paths[i], name, out_dir, options, n_steps, overwrite, run
        ),
        task,
        cluster,
        overwrite,
        resume,
        check_kept=lambda path: _check_resumable(path, model, options, n_steps),
        on_done=on_done,
    )
