"""The `train` stage: a DDPM (eps-prediction, MSE) on random patches of real, unannotated images.

AdamW, EMA weights for sampling, gradient clipping, bf16 autocast on CUDA. A run directory
holds checkpoint.pt (self-describing), config.json, loss.csv and loss.png; `resume`
continues exactly where a run stopped (the random generator state is checkpointed too).

Under torchrun every process is one rank of DistributedDataParallel (distributed.py): each
draws its own patches and noise (generator seeded from the seed and its rank), gradients are
averaged, rank 0 alone writes the run directory. The checkpoint is the same as a single
process's, plus every rank's generator state, so it resumes under torchrun with the same
number of processes exactly, and in one process (or another number) from rank 0's state.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth_cli import io
from cellsynth_cli.ddpm.checkpoint import CHECKPOINT_NAME, read_checkpoint, save_checkpoint
from cellsynth_cli.ddpm.config import TrainConfig
from cellsynth_cli.ddpm.patches import PatchSampler
from cellsynth_cli.ddpm.pseudo_sketch import pseudo_sketch
from cellsynth_cli.diffusion.conditioning import CONDITIONS, is_conditional
from cellsynth_cli.diffusion.process import training_loss
from cellsynth_cli.diffusion.schedule import make_schedule
from cellsynth_cli.errors import InputError
from cellsynth_cli.io.intensity import robust_range, to_unit, unit_to_model
from cellsynth_cli.runtime import distributed
from cellsynth_cli.runtime.device import pick_device

LOSS_LOG = "loss.csv"


@dataclass
class TrainResult:
    run: Path
    step: int
    final_loss: float
    seconds: float
    stopped_by_time_limit: bool
    device: str
    losses: list[float] = field(default_factory=list)


@dataclass
class TrainingImages:
    images: list[np.ndarray]
    dims: int  # of the model
    voxel_size: tuple[float, ...] | None  # of the first volume that has one
    names: list[str] = field(default_factory=list)  # one volume name per image


def load_training_images(data: Path, dims: int | None) -> TrainingImages:
    """All real images of a directory (zarr or TIFF), the model dims and the voxel size."""
    volumes = [v for v in io.read_volumes(data)]
    images = [v.image for v in volumes if v.image is not None]
    names = [v.name for v in volumes if v.image is not None]
    if not images:
        raise InputError(f"{data}: no real intensity images found (simulated sketches only?)")
    ndims = {im.ndim for im in images}
    if len(ndims) > 1:
        raise InputError(f"{data}: mixes 2D and 3D images; train on one kind")
    data_dims = ndims.pop()
    dims = dims or data_dims
    if dims not in (2, 3):
        raise InputError(f"--dims must be 2 or 3, got {dims}")
    if dims == 3 and data_dims == 2:
        raise InputError(f"{data}: a 3D model needs 3D images; these are 2D")
    voxel_size = next((tuple(v.voxel_size) for v in volumes if v.voxel_size), None)
    return TrainingImages(images=images, dims=dims, voxel_size=voxel_size, names=names)


def _sizes(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def check_patch_fits(
    found: TrainingImages, patch: tuple[int, ...], multiples: tuple[int, ...], data: str
) -> None:
    """Refuse images smaller than the training patch: padded by reflection, a 4x4 image
    would train the network on mirrored copies of its 16 pixels, silently."""
    spatial = [tuple(im.shape[-found.dims :]) for im in found.images]
    names = found.names or [f"#{i + 1}" for i in range(len(spatial))]
    for name, shape in zip(names, spatial, strict=True):
        if all(s >= p for s, p in zip(shape, patch, strict=True)):
            continue
        smallest = [min(sizes) for sizes in zip(*spatial, strict=True)]
        fits = [min(p, s // m * m) for p, s, m in zip(patch, smallest, multiples, strict=True)]
        where = f"--data {data}: image {name} is {_sizes(shape)}, smaller than the patch"
        if min(fits) > 0:
            raise InputError(
                f"{where} {_sizes(patch)}; pass --patch {','.join(map(str, fits))} or smaller "
                f"(multiples of {_sizes(multiples)}, the network's down-sampling)"
            )
        raise InputError(
            f"{where} {_sizes(patch)} and than the network's down-sampling {_sizes(multiples)} "
            "(a patch is a multiple of it); train on larger images"
        )


def _rank_generator_state(
    state: dict[str, Any], ranks: distributed.Ranks, seed: int, step: int
) -> torch.Tensor:
    """This rank's generator state from a checkpoint: its own when the run had as many ranks,
    rank 0's for a single process, else a fresh stream derived from the seed, rank and step."""
    saved = state.get("rank_generators")
    if saved is not None and len(saved) == ranks.world:
        return saved[ranks.rank]
    if ranks.rank == 0:
        return state["generator"]
    fresh = np.random.SeedSequence([seed, ranks.rank, step]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(fresh)).get_state()


def _pseudo_sketch_summary(pseudo: list[tuple[np.ndarray, np.ndarray]] | None) -> dict:
    if pseudo is None:
        return {}
    counts = [int(labels.max()) for _, labels in pseudo]
    return {"pseudo_sketches": {"images": len(counts), "nuclei_per_image": counts}}


def _save_pseudo_sketch_preview(
    path: Path, image: np.ndarray, pseudo: tuple[np.ndarray, np.ndarray]
) -> None:
    """image | pseudo-sketch | its labels, so a person can check what the network learns from."""
    from cellsynth_cli.io.preview import save_panels

    sketch, labels = pseudo
    panels = [("real image", image, False), ("pseudo-sketch", sketch, False)]
    save_panels(path, [*panels, ("regions", labels, True)])


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)
        for e, b in zip(ema.buffers(), model.buffers(), strict=True):
            e.copy_(b)


def _truncate_log(path: Path, step: int) -> None:
    if not path.exists():
        return
    with open(path) as fh:
        rows = list(csv.reader(fh))
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step] if rows else []
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)


def _write_loss_plot(run: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = [], []
    with open(run / LOSS_LOG) as fh:
        for row in csv.DictReader(fh):
            steps.append(int(row["step"]))
            losses.append(float(row["loss"]))
    if not steps:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=0.6, alpha=0.4, label="loss")
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    ax.plot(steps[window - 1 :], smooth, lw=1.5, label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE(eps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run / "loss.png", dpi=100)
    plt.close(fig)


def train(
    config: TrainConfig,
    run: Path,
    resume: bool = False,
    overwrite: bool = False,
    time_limit: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train (or resume) a DDPM into RUN/; returns where it stopped and the last loss.

    on_checkpoint(step) is called after every checkpoint is on disk (also the one written
    when training is interrupted).
    """
    from cellsynth_cli.diffusion.unet import (
        UNet,
        UNetConfig,
        anisotropic_factors,
        default_config,
        tune_cpu_allocator,
    )

    run = Path(run)
    ckpt = run / CHECKPOINT_NAME
    state = None
    if resume:
        state = read_checkpoint(run)
        if "optimizer" not in state or "model" not in state:
            raise InputError(
                f"{run} holds weights only (a bundled or exported model): it cannot be resumed"
            )
        saved = dict(state["config"])
        # a resumed run keeps its configuration; only the step budget may grow
        config = TrainConfig(
            **{
                **saved,
                "steps": config.steps,
                "device": config.device,
                "patch": tuple(saved["patch"]),
                "channels": tuple(saved["channels"]) if saved["channels"] else None,
            }
        )
    elif ckpt.exists() and not overwrite:
        raise InputError(f"{run} already holds a trained model; pass --resume or --overwrite")
    if config.steps < 1 or config.batch < 1 or config.lr <= 0:
        raise InputError("--steps and --batch must be >= 1 and --lr > 0")
    if config.condition not in CONDITIONS:
        raise InputError(
            f"--condition must be one of {', '.join(CONDITIONS)}, got {config.condition!r}"
        )
    if not 0.0 <= config.condition_dropout < 1.0:
        raise InputError(f"--condition-dropout must be in [0, 1), got {config.condition_dropout}")
    ranks, device = distributed.setup(pick_device(config.device))
    if device.type == "cpu":
        tune_cpu_allocator()  # keeps big feature maps resident: ~1.5x faster steps on CPU

    found = load_training_images(Path(config.data), config.dims)
    images, dims = found.images, found.dims
    if state is not None:
        norm = state["normalization"]
        lo, hi = norm["low"], norm["high"]
    else:
        lo, hi = robust_range(images)
        norm = {"low": lo, "high": hi, "method": "percentiles 1.0 / 99.8 of the training data"}
    model_images = [unit_to_model(to_unit(im, lo, hi)) for im in images]
    conditions, pseudo = None, None
    if is_conditional(config.to_dict()):
        pseudo = [pseudo_sketch(im, lo, hi, found.voxel_size) for im in images]
        conditions = [unit_to_model(sketch) for sketch, _ in pseudo]

    if state is not None:
        unet_config = UNetConfig.from_dict(state["unet"])
    else:
        # z is not down-sampled while it is coarser than y/x (checkpoint says so)
        voxel_size = found.voxel_size if dims == 3 else None
        unet_config = default_config(dims, voxel_size)
        if conditions is not None:  # the sketch is a second input channel
            unet_config = UNetConfig.from_dict({**unet_config.to_dict(), "in_channels": 2})
        if config.channels:
            unet_config = UNetConfig.from_dict(
                {
                    **unet_config.to_dict(),
                    "channels": list(config.channels),
                    "down_factors": anisotropic_factors(len(config.channels), voxel_size),
                }
            )
    with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG untouched
        torch.manual_seed(config.seed)
        model = UNet(unet_config).to(device)
    multiples = model.multiples
    if len(config.patch) != dims or any(
        p % m for p, m in zip(config.patch, multiples, strict=True)
    ):
        raise InputError(f"--patch {config.patch} must have {dims} sizes, multiples of {multiples}")
    check_patch_fits(found, config.patch, multiples, config.data)
    ema = copy.deepcopy(model).eval()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(distributed.rank_seed(config.seed, ranks.rank))
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        generator.set_state(_rank_generator_state(state, ranks, config.seed, step))
    network = distributed.wrap(model, ranks, device)  # DDP under torchrun, else the model

    sampler = PatchSampler(model_images, config.patch, dims, conditions)
    schedule = make_schedule(config.schedule, config.T)
    if ranks.main:
        run.mkdir(parents=True, exist_ok=True)
        if not resume:
            (run / LOSS_LOG).unlink(missing_ok=True)
        else:
            _truncate_log(run / LOSS_LOG, step)  # rows after the checkpoint are redone
        (run / "config.json").write_text(
            json.dumps(
                {
                    "train": config.to_dict(),
                    "unet": unet_config.to_dict(),
                    "normalization": norm,
                    "dims": dims,
                    "world_size": ranks.world,
                    **_pseudo_sketch_summary(pseudo),
                },
                indent=2,
            )
        )
        if pseudo is not None:
            _save_pseudo_sketch_preview(run / "pseudo-sketch.png", images[0], pseudo[0])

    def checkpoint() -> None:
        generators = distributed.gather(generator.get_state(), ranks)  # every rank takes part
        if not ranks.main:
            return
        save_checkpoint(
            ckpt,
            {
                "config": {**config.to_dict(), "dims": dims},
                "unet": unet_config.to_dict(),
                "normalization": norm,
                "dims": dims,
                "step": step,
                "model": model.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generators[0],
                "rank_generators": generators,
                "world_size": ranks.world,
            },
        )
        if on_checkpoint:
            on_checkpoint(step)

    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    start = time.perf_counter()
    losses: list[float] = []
    stopped = False
    log_new = ranks.main and not (run / LOSS_LOG).exists()
    log_file = open(run / LOSS_LOG, "a", newline="") if ranks.main else contextlib.nullcontext()
    with log_file as log:
        writer = csv.writer(log) if ranks.main else None
        if log_new:
            writer.writerow(["step", "loss", "lr", "seconds"])
        network.train()
        try:
            while step < config.steps:
                if time_limit is not None and distributed.any_rank(
                    time.perf_counter() - start >= time_limit, ranks, device
                ):  # every rank stops at the same step
                    stopped = True
                    break
                lr = config.lr * min(1.0, (step + 1) / max(config.warmup, 1))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                patches = sampler.sample(config.batch, generator).to(device)
                x0, condition = patches[:, :1], patches[:, 1:] if conditions else None
                with autocast:
                    loss = training_loss(
                        network, x0, schedule, generator, condition, config.condition_dropout
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                _ema_update(ema, model, config.ema_decay if step >= config.warmup else 0.0)
                step += 1
                value = distributed.mean(loss, ranks)  # the loss of the global batch
                if not math.isfinite(value):
                    raise RuntimeError(f"training diverged at step {step} (loss {value})")
                losses.append(value)
                if writer is not None:
                    writer.writerow(
                        [step, f"{value:.6g}", f"{lr:.3g}", f"{time.perf_counter() - start:.2f}"]
                    )
                if on_step and ranks.main:
                    on_step(step, value)
                if step % config.checkpoint_every == 0:
                    if ranks.main:
                        log.flush()
                    checkpoint()
        except KeyboardInterrupt:
            # Ctrl-C keeps the work done so far: resume with --resume. Under torchrun the
            # other ranks may be gone already, so the last periodic checkpoint stands.
            if not ranks.active:
                checkpoint()
            raise
    checkpoint()
    if ranks.main:
        _write_loss_plot(run)
    return TrainResult(
        run=run,
        step=step,
        final_loss=losses[-1] if losses else float("nan"),
        seconds=time.perf_counter() - start,
        stopped_by_time_limit=stopped,
        device=str(device),
        losses=losses,
    )
