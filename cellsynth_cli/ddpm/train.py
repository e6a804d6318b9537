"""The `train` stage: a DDPM (eps-prediction, MSE) on random patches of real, unannotated images.

AdamW, EMA weights for sampling, gradient clipping, bf16 autocast on CUDA. A run directory
holds checkpoint.pt (self-describing), config.json, loss.csv and loss.png; `resume`
continues exactly where a run stopped (the random generator state is checkpointed too).
`init` starts a new run from another model's EMA weights (fine-tuning, e.g. the bundled
model on a user's images, or the round-2 generator on a segmenter's masks); the run keeps
that network and scales its own images by their own robust range, as every run does.

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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth_cli import io, workdir
from cellsynth_cli.ddpm.checkpoint import (
    CHECKPOINT_NAME,
    checkpoint_path,
    read_checkpoint,
    save_checkpoint,
)
from cellsynth_cli.ddpm.config import TrainConfig
from cellsynth_cli.ddpm.patches import PatchSampler
from cellsynth_cli.ddpm.pseudo_sketch import pseudo_sketches
from cellsynth_cli.diffusion.conditioning import CONDITIONS, is_conditional
from cellsynth_cli.diffusion.process import training_loss
from cellsynth_cli.diffusion.schedule import make_schedule
from cellsynth_cli.errors import InputError
from cellsynth_cli.io import file_checksum
from cellsynth_cli.io.intensity import robust_range, to_unit, unit_to_model
from cellsynth_cli.runtime import distributed
from cellsynth_cli.runtime.device import pick_device
from cellsynth_cli.simulate.sketch_from_labels import sketch_from_labels

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
    masks: list[np.ndarray | None] = field(default_factory=list)  # per image, None: unlabelled


def load_training_images(data: Path, dims: int | None) -> TrainingImages:
    """All real images of a directory (zarr or TIFF), the model dims and the voxel size."""
    volumes = io.read_images(data, "train on")
    images = [v.image for v in volumes]
    names = [v.name for v in volumes]
    data_dims = images[0].ndim
    dims = dims or data_dims
    if dims not in (2, 3):
        raise InputError(f"--dims must be 2 or 3, got {dims}")
    if dims == 3 and data_dims == 2:
        raise InputError(f"{data}: a 3D model needs 3D images; these are 2D")
    voxel_size = next((tuple(v.voxel_size) for v in volumes if v.voxel_size), None)
    masks = [v.masks for v in volumes]
    return TrainingImages(images, dims, voxel_size, names, masks)


def training_sketches(
    found: TrainingImages, condition: str, low: float, high: float
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(sketch in [0, 1], instance labels) of each training image: a pseudo-sketch from a
    classical detection of the nuclei, or a label-sketch from the image's own masks."""
    if condition == "pseudo-sketch":
        return pseudo_sketches(found.images, low, high, found.voxel_size)
    sketches = []
    for name, image, masks in zip(found.names, found.images, found.masks, strict=True):
        if masks is None or not masks.any():
            raise InputError(
                f"--condition label-sketch draws each image's sketch from its masks; {name} has "
                "no labelled cell (masks come from annotations or `cellsynth segment predict`; "
                "leave out images without cells)"
            )
        sketches.append((sketch_from_labels(image, masks, low, high)[0], masks))
    return sketches


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


def _sketch_summary(condition: str, pseudo: list[tuple[np.ndarray, np.ndarray]] | None) -> dict:
    if pseudo is None:
        return {}
    counts = [int(np.unique(labels[labels > 0]).size) for _, labels in pseudo]
    key = condition.replace("-", "_") + "es"  # pseudo_sketches / label_sketches
    return {key: {"images": len(counts), "nuclei_per_image": counts}}


def _save_sketch_preview(
    path: Path, image: np.ndarray, pseudo: tuple[np.ndarray, np.ndarray], condition: str
) -> None:
    """image | sketch | its labels, so a person can check what the network learns from."""
    from cellsynth_cli.io.preview import save_panels

    sketch, labels = pseudo
    panels = [("real image", image, False), (condition, sketch, False)]
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
    run = Path(run)
    state = _state_to_resume(run, resume, overwrite)
    start = None
    if state is not None:
        config = _resumed_config(config, state)
    elif config.init:
        start = _init_model(config.init)
        config = replace(config, channels=tuple(start["unet"]["channels"]))  # as the network's
    _check_config(config)
    loop = TrainLoop(config, run, state, start)
    loop.write_run_files(resume)
    return loop.run_loop(time_limit, on_step, on_checkpoint)


@dataclass
class ProjectRun:
    """A training run in a project: its result, runs/latest when it was pointed at the run,
    and what could not be done on the way (e.g. the link)."""

    result: TrainResult
    latest: Path | None
    warnings: list[str] = field(default_factory=list)


def new_run(data: Path, ranks: distributed.Ranks) -> Path:
    """A new runs/DATA-TIME/ claimed by rank 0 (created, so it is unique), the same path on
    every rank."""
    return distributed.broadcast(workdir.new_run_dir(data) if ranks.main else None, ranks)


def train_in_project(
    config: TrainConfig,
    run: Path,
    claimed: bool,
    resume: bool = False,
    overwrite: bool = False,
    time_limit: float | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> ProjectRun:
    """train() as `cellsynth train` runs it: runs/latest follows the run from its first
    checkpoint on (so a run stopped any way is found by --resume and synthesize), and a run
    directory made for this run (CLAIMED) is removed again when nothing was saved into it."""
    latest: list[Path | None] = []
    warnings: list[str] = []

    def checkpointed(step: int) -> None:
        if not latest:
            try:
                latest.append(workdir.link_latest(run))
            except OSError as exc:
                latest.append(None)
                warnings.append(f"could not point {workdir.RUNS}/{workdir.LATEST} at {run}: {exc}")
        if on_checkpoint:
            on_checkpoint(step)

    try:
        result = train(config, run, resume, overwrite, time_limit, on_step, checkpointed)
    finally:
        if claimed and not latest:
            shutil.rmtree(run, ignore_errors=True)  # refused or failed before a step
    return ProjectRun(result, latest[0] if latest else None, warnings)


def _state_to_resume(run: Path, resume: bool, overwrite: bool) -> dict | None:
    """The checkpoint to continue from (resume), None for a new run; a trained run is not
    replaced without overwrite."""
    if not resume:
        if (run / CHECKPOINT_NAME).exists() and not overwrite:
            raise InputError(f"{run} already holds a trained model; pass --resume or --overwrite")
        return None
    state = read_checkpoint(run)
    if "optimizer" not in state or "model" not in state:
        raise InputError(
            f"{run} holds weights only (a bundled or exported model): it cannot be resumed"
        )
    return state


def _resumed_config(config: TrainConfig, state: dict) -> TrainConfig:
    """A resumed run keeps its configuration; only the step budget (and device) may change."""
    saved = dict(state["config"])
    return TrainConfig(
        **{
            **saved,
            "steps": config.steps,
            "device": config.device,
            "patch": tuple(saved["patch"]),
            "channels": tuple(saved["channels"]) if saved["channels"] else None,
        }
    )


def _check_config(config: TrainConfig) -> None:
    if config.steps < 1 or config.batch < 1 or config.lr <= 0:
        raise InputError("--steps and --batch must be >= 1 and --lr > 0")
    if config.condition not in CONDITIONS:
        raise InputError(
            f"--condition must be one of {', '.join(CONDITIONS)}, got {config.condition!r}"
        )
    if not 0.0 <= config.condition_dropout < 1.0:
        raise InputError(f"--condition-dropout must be in [0, 1), got {config.condition_dropout}")


def _init_model(init: str) -> dict:
    """The --init model's checkpoint, its network configuration checked."""
    from cellsynth_cli.diffusion.unet import UNetConfig

    start = read_checkpoint(init)
    try:
        UNetConfig.from_dict(start["unet"])
    except (TypeError, KeyError, ValueError) as exc:
        raise InputError(
            f"--init {init}: its network configuration is unreadable ({exc})"
        ) from None
    return start


def _start_from(model: torch.nn.Module, start: dict, config: TrainConfig, dims: int) -> dict:
    """Load the EMA weights of START (the --init model) into MODEL after checking that it
    fits this run; returns what the run records about it."""
    name = f"--init {config.init}"
    unet, trained = start["unet"], start["config"]
    if unet.get("dims") != dims:
        raise InputError(f"{name} is a {unet.get('dims')}D model; these images are {dims}D")
    sketched = trained.get("condition", "none")
    if (sketched == "none") != (config.condition == "none"):
        raise InputError(
            f"{name} was trained with --condition {sketched}; pass --condition "
            f"{'none' if sketched == 'none' else 'pseudo-sketch or label-sketch'} to fine-tune it"
        )
    for key in ("schedule", "T"):
        if trained.get(key, getattr(config, key)) != getattr(config, key):
            raise InputError(f"{name} uses {key} {trained[key]}; this run {getattr(config, key)}")
    try:
        model.load_state_dict(start["ema"])
    except RuntimeError as exc:
        raise InputError(f"{name}: its weights do not fit its network ({exc})") from None
    path = checkpoint_path(config.init)
    return {"model": config.init, "checksum": file_checksum(path), "step": int(start["step"])}


def _unet_config(config: TrainConfig, found: TrainingImages, conditional: bool) -> Any:
    """The network of a new run: the default for the data (z is not down-sampled while it is
    coarser than y/x), a sketch input channel when conditional, --channels if given."""
    from cellsynth_cli.diffusion.unet import UNetConfig, anisotropic_factors, default_config

    voxel_size = found.voxel_size if found.dims == 3 else None
    unet_config = default_config(found.dims, voxel_size)
    if conditional:  # the sketch is a second input channel
        unet_config = UNetConfig.from_dict({**unet_config.to_dict(), "in_channels": 2})
    if config.channels:
        unet_config = UNetConfig.from_dict(
            {
                **unet_config.to_dict(),
                "channels": list(config.channels),
                "down_factors": anisotropic_factors(len(config.channels), voxel_size),
            }
        )
    return unet_config


class TrainLoop:
    """One training run: data, network, EMA, optimizer and generator, built (or restored from
    a checkpoint) in __init__; run_step / save / run_loop do the work (improved-diffusion's
    TrainLoop). Under torchrun every rank builds one; rank 0 alone writes."""

    def __init__(
        self, config: TrainConfig, run: Path, state: dict | None, start: dict | None = None
    ) -> None:
        """STATE: the run's own checkpoint (resume); START: the --init model's (fine-tuning)."""
        from cellsynth_cli.diffusion.unet import UNet, UNetConfig, tune_cpu_allocator

        self.config, self.run, self.step = config, run, 0
        self.restored = state is not None
        self.ranks, self.device = distributed.setup(pick_device(config.device))
        if self.device.type == "cpu":
            tune_cpu_allocator()  # keeps big feature maps resident: ~1.5x faster steps on CPU
        self._load_data(state)
        if state is not None:
            self.unet_config = UNetConfig.from_dict(state["unet"])
        elif start is not None:
            self.unet_config = UNetConfig.from_dict(start["unet"])  # checked by _init_model
        else:
            self.unet_config = _unet_config(config, self.found, self.conditions is not None)
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG untouched
            torch.manual_seed(config.seed)
            self.model = UNet(self.unet_config).to(self.device)
        self.init = state.get("init") if state is not None else None
        if start is not None:
            self.init = _start_from(self.model, start, config, self.found.dims)
        self._check_patch()
        self.ema = copy.deepcopy(self.model).eval()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        seed = distributed.rank_seed(config.seed, self.ranks.rank)
        self.generator = torch.Generator().manual_seed(seed)
        if state is not None:
            self._restore(state)
        self.network = distributed.wrap(self.model, self.ranks, self.device)  # DDP or the model
        self.sampler = PatchSampler(
            self.model_images, config.patch, self.found.dims, self.conditions
        )
        self.schedule = make_schedule(config.schedule, config.T)

    def _load_data(self, state: dict | None) -> None:
        """Images scaled to [-1, 1] by the run's robust range (a resumed run keeps its own),
        and pseudo-sketches of them for a conditional model."""
        config = self.config
        self.found = load_training_images(Path(config.data), config.dims)
        images = self.found.images
        if state is not None:
            self.norm = state["normalization"]
        else:
            lo, hi = robust_range(images)
            self.norm = {
                "low": lo,
                "high": hi,
                "method": "percentiles 1.0 / 99.8 of the training data",
            }
        lo, hi = self.norm["low"], self.norm["high"]
        self.model_images = [unit_to_model(to_unit(im, lo, hi)) for im in images]
        self.conditions, self.pseudo = None, None
        if is_conditional(config.to_dict()):
            self.pseudo = training_sketches(self.found, config.condition, lo, hi)
            self.conditions = [unit_to_model(sketch) for sketch, _ in self.pseudo]

    def _check_patch(self) -> None:
        patch, dims, multiples = self.config.patch, self.found.dims, self.model.multiples
        if len(patch) != dims or any(p % m for p, m in zip(patch, multiples, strict=True)):
            raise InputError(f"--patch {patch} must have {dims} sizes, multiples of {multiples}")
        check_patch_fits(self.found, patch, multiples, self.config.data)

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        rank_state = _rank_generator_state(state, self.ranks, self.config.seed, self.step)
        self.generator.set_state(rank_state)

    def write_run_files(self, resume: bool) -> None:
        """RUN/config.json, the loss log (a resumed run redoes the rows after its
        checkpoint) and the pseudo-sketch preview; rank 0 only."""
        if not self.ranks.main:
            return
        run = self.run
        run.mkdir(parents=True, exist_ok=True)
        if not resume:
            (run / LOSS_LOG).unlink(missing_ok=True)
        else:
            _truncate_log(run / LOSS_LOG, self.step)
        summary = {
            "train": self.config.to_dict(),
            "unet": self.unet_config.to_dict(),
            "normalization": self.norm,
            "dims": self.found.dims,
            "world_size": self.ranks.world,
            **_sketch_summary(self.config.condition, self.pseudo),
            **({"init": self.init} if self.init else {}),
        }
        (run / "config.json").write_text(json.dumps(summary, indent=2))
        if self.pseudo is not None:
            condition = self.config.condition
            preview = run / f"{condition}.png"
            _save_sketch_preview(preview, self.found.images[0], self.pseudo[0], condition)

    def save(self) -> bool:
        """Checkpoint (every rank takes part in gathering the generators; rank 0 writes).
        True where it was written."""
        generators = distributed.gather(self.generator.get_state(), self.ranks)
        if not self.ranks.main:
            return False
        dims = self.found.dims
        save_checkpoint(
            self.run / CHECKPOINT_NAME,
            {
                "config": {**self.config.to_dict(), "dims": dims},
                "unet": self.unet_config.to_dict(),
                "normalization": self.norm,
                "dims": dims,
                "step": self.step,
                "model": self.model.state_dict(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "generator": generators[0],
                "rank_generators": generators,
                "world_size": self.ranks.world,
                **({"init": self.init} if self.init else {}),
            },
        )
        return True

    def run_step(self) -> tuple[float, float]:
        """One optimisation step (warm-up learning rate, loss, clipped gradient, EMA);
        returns the loss of the global batch and the learning rate."""
        config = self.config
        lr = config.lr * min(1.0, (self.step + 1) / max(config.warmup, 1))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        patches = self.sampler.sample(config.batch, self.generator).to(self.device)
        x0, condition = patches[:, :1], patches[:, 1:] if self.conditions else None
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        with autocast:
            loss = training_loss(
                self.network, x0, self.schedule, self.generator, condition, config.condition_dropout
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        _ema_update(self.ema, self.model, config.ema_decay if self.step >= config.warmup else 0.0)
        self.step += 1
        value = distributed.mean(loss, self.ranks)
        if not math.isfinite(value):
            raise RuntimeError(f"training diverged at step {self.step} (loss {value})")
        return value, lr

    def run_loop(
        self,
        time_limit: float | None,
        on_step: Callable[[int, float], None] | None,
        on_checkpoint: Callable[[int], None] | None,
    ) -> TrainResult:
        """Steps up to config.steps (or the time limit, the same step on every rank), the loss
        log, a checkpoint every checkpoint_every steps and at the end (Ctrl-C included)."""
        ranks, start, first_step = self.ranks, time.perf_counter(), self.step
        losses: list[float] = []
        stopped = False

        def save() -> None:
            if self.save() and on_checkpoint:
                on_checkpoint(self.step)

        with self._loss_log() as writer:
            self.network.train()
            try:
                while self.step < self.config.steps:
                    elapsed = time.perf_counter() - start
                    if time_limit is not None and distributed.any_rank(
                        elapsed >= time_limit, ranks, self.device
                    ):
                        stopped = True
                        break
                    value, lr = self.run_step()
                    losses.append(value)
                    if writer is not None:
                        seconds = f"{time.perf_counter() - start:.2f}"
                        writer.writerow([self.step, f"{value:.6g}", f"{lr:.3g}", seconds])
                    if on_step and ranks.main:
                        on_step(self.step, value)
                    if self.step % self.config.checkpoint_every == 0:
                        if writer is not None:
                            writer.flush()
                        save()
            except KeyboardInterrupt:
                # Ctrl-C keeps the work done so far: resume with --resume. Under torchrun the
                # other ranks may be gone already, so the last periodic checkpoint stands.
                if not ranks.active:
                    save()
                raise
        # a resumed run already at its step budget is left byte for byte as it was: stages
        # that recorded its checksum (synthesis) still accept it
        if self.step > first_step or not self.restored:  # the same answer on every rank
            save()
        if ranks.main:
            _write_loss_plot(self.run)
        return TrainResult(
            run=self.run,
            step=self.step,
            final_loss=losses[-1] if losses else float("nan"),
            seconds=time.perf_counter() - start,
            stopped_by_time_limit=stopped,
            device=str(self.device),
            losses=losses,
        )

    @contextlib.contextmanager
    def _loss_log(self) -> Any:
        """RUN/loss.csv opened for appending (with its header when new) as a csv writer with
        a flush(); None on ranks other than 0."""
        if not self.ranks.main:
            yield None
            return
        path = self.run / LOSS_LOG
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = _FlushingWriter(fh)
            if new:
                writer.writerow(["step", "loss", "lr", "seconds"])
            yield writer


class _FlushingWriter:
    """csv.writer with the file's flush: the log is on disk at every checkpoint."""

    def __init__(self, fh: Any) -> None:
        self._fh, self._writer = fh, csv.writer(fh)

    def writerow(self, row: list) -> None:
        self._writer.writerow(row)

    def flush(self) -> None:
        self._fh.flush()
