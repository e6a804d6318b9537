"""`cellsynth train`: a DDPM on real, unannotated images."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cellsynth_cli import workdir
from cellsynth_cli.cli.common import (
    EXIT_INTERRUPTED,
    CellsynthCommand,
    Device,
    JsonOut,
    Overwrite,
    Resume,
    Seed,
    console,
    default_path,
    erase_on_error,
    parse_sizes,
    path_option,
    print_json,
    sigterm_as_interrupt,
)
from cellsynth_cli.ddpm.config import DEFAULT_PATCH, TrainConfig
from cellsynth_cli.errors import InputError

DEFAULTS = TrainConfig  # its field defaults are the options' defaults


def parse_duration(text: str | None) -> float | None:
    """'90', '90s', '15m', '2h' -> seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise InputError(f"--time-limit expects seconds or e.g. 15m / 2h, got {text!r}") from None


def _init_model(init: str | None) -> str | None:
    """--init as the run records it: a link such as runs/latest resolved, so the record
    still names the model after the link moves on."""
    from cellsynth_cli.ddpm import bundled

    if init is None or bundled.is_bundled(init):
        return init
    return str(Path(init).resolve())


def _sizes(sizes: tuple[int, ...]) -> str:
    return ",".join(map(str, sizes))


def train(
    data: path_option(
        ("--data",), "Directory of real, unannotated images (zarr or TIFF).", workdir.REAL
    ) = None,
    out: path_option(
        ("-o", "--out"),
        "Run directory for the checkpoint and logs. Default: a new runs/DATA-YYYYmmdd-HHMMSS/ "
        "(runs/latest with --resume); runs/latest then points at it.",
    ) = None,
    dims: int = typer.Option(
        None, "--dims", help="2 or 3; default the data's. --dims 2 on 3D data trains on z slices."
    ),
    patch: str = typer.Option(
        None,
        "--patch",
        help=f"Patch size, default {_sizes(DEFAULT_PATCH[2])} (2D) or "
        f"{_sizes(DEFAULT_PATCH[3])} (3D).",
    ),
    steps: int = typer.Option(DEFAULTS.steps, "--steps", help="Total optimisation steps."),
    batch: int = typer.Option(DEFAULTS.batch, "--batch", help="Patches per step."),
    lr: float = typer.Option(
        DEFAULTS.lr, "--lr", help="AdamW learning rate (with a short warm-up)."
    ),
    seed: Seed = DEFAULTS.seed,
    device: Device = DEFAULTS.device,
    channels: str = typer.Option(
        None, "--channels", help="UNet channels per level, e.g. 16,32,64,128 (default: built in)."
    ),
    time_limit: str = typer.Option(
        None,
        "--time-limit",
        help="Stop cleanly after this long (e.g. 600, 10m, 2h), checkpointing.",
    ),
    checkpoint_every: int = typer.Option(
        DEFAULTS.checkpoint_every, "--checkpoint-every", help="Steps between saves."
    ),
    condition: str = typer.Option(
        DEFAULTS.condition,
        "--condition",
        help="none: the paper's unconditional DDPM (synthesis follows a sketch only through "
        "t_start). pseudo-sketch: the network also sees a sketch of each training image, made "
        "without annotations (the nuclei `simulate fit` finds, dim ones included, filled with "
        "their mean intensity; RUN/pseudo-sketch.png shows one), and synthesis follows the "
        "simulated sketch at every step. label-sketch: the same, drawn from each image's own "
        "masks (real annotations, or `segment predict` output: better outlines than the "
        "classical segmentation; RUN/label-sketch.png).",
    ),
    init: str = typer.Option(
        None,
        "--init",
        help="Start from this model's weights instead of random ones (fine-tuning): a run "
        "directory, its checkpoint.pt or bundled:NAME. Its network, schedule and sketch input "
        "are kept (no --channels); the run scales your images by their own range.",
    ),
    condition_dropout: float = typer.Option(
        DEFAULTS.condition_dropout,
        "--condition-dropout",
        help="With --condition: the share of training patches whose sketch is hidden, so the "
        "model also learns the unconditional prediction (needed for synthesize --guidance).",
    ),
    resume: Resume = False,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Train a denoising diffusion model (cosine schedule, T=1000, eps-prediction, MSE).

    Intensities are scaled to [-1, 1] with robust percentiles of the training data; those
    travel in RUN/checkpoint.pt with the network configuration, so `synthesize` needs no
    architecture flags. RUN/ also gets config.json, loss.csv and loss.png. --resume continues
    a run exactly where it stopped (same result as one uninterrupted run); its data and
    settings come from its checkpoint, only --steps may grow. Ctrl-C or SIGTERM (a batch
    scheduler's stop) saves a checkpoint first.

    Examples:

        cellsynth train --data real/            # -> runs/real-YYYYmmdd-HHMMSS/
        cellsynth train --data real/ --steps 20000 --time-limit 2h
        cellsynth train --resume --steps 40000  # continue runs/latest
        cellsynth train --data real/ --condition pseudo-sketch \\
            --init bundled:dsb2018-nuclei-conditional --steps 500   # fine-tune
        cellsynth train --data pred/ --condition label-sketch --init runs/latest
        torchrun --nproc-per-node 4 $(which cellsynth) train --data real/   # 4 GPUs (DDP)

    Under torchrun each process trains on its own patches (--batch per process) with
    gradients averaged (DistributedDataParallel: nccl on GPUs, gloo on CPUs); rank 0 writes
    the run. Its checkpoint resumes anywhere, exactly under the same number of processes.
    """
    import torch

    from cellsynth_cli.ddpm.train import train_in_project
    from cellsynth_cli.runtime import distributed
    from cellsynth_cli.runtime.device import pick_device

    if dims is not None and dims not in (2, 3):
        raise InputError(f"--dims must be 2 or 3, got {dims}")
    # bad sizes are refused before a run directory is claimed
    patch_size = parse_sizes(patch, "--patch")
    channel_sizes = parse_sizes(channels, "--channels")
    if init and channel_sizes:
        raise InputError("--channels and --init: a fine-tuned run keeps its --init network")
    if init and resume:
        raise InputError("--init starts a new run from a model; --resume continues a run")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    # under torchrun: join the process group; only rank 0 prints, links and cleans up
    ranks, _ = distributed.setup(pick_device(device))
    console.quiet = console.quiet or not ranks.main
    data, out, claimed = _run_directory(data, out, resume, ranks)
    config = TrainConfig(
        data=str(data),
        dims=(dims := _dims(dims, data, resume)),
        patch=patch_size or DEFAULT_PATCH[dims],
        steps=steps,
        batch=batch,
        lr=lr,
        seed=seed,
        device=device,
        checkpoint_every=checkpoint_every,
        condition=condition,
        condition_dropout=condition_dropout,
        channels=None if init else channel_sizes or _default_channels(dims),
        init=_init_model(init),
    )
    progress = _progress_bar(disable=json_out or not ranks.main)
    with progress, erase_on_error(progress):
        on_step = _step_reporter(progress, steps)
        saved: list[int] = []
        try:
            with sigterm_as_interrupt():
                project_run = train_in_project(
                    config,
                    out,
                    claimed,
                    resume=resume,
                    overwrite=overwrite,
                    time_limit=parse_duration(time_limit),
                    on_step=on_step,
                    on_checkpoint=saved.append,
                )
        except KeyboardInterrupt:
            distributed.shutdown(wait=False)
            progress.stop()
            where = f"checkpoint at step {saved[-1]} in {out}" if saved else "nothing saved"
            console.print(f"interrupted: {where}; continue with --resume")
            raise typer.Exit(EXIT_INTERRUPTED) from None
    distributed.shutdown()
    if ranks.main:
        _print_result(project_run, json_out)


def _run_directory(data: Path | None, out: Path | None, resume: bool, ranks) -> tuple:
    """(data, run directory, whether it was claimed here and is removed if nothing is saved)."""
    from cellsynth_cli.ddpm.train import new_run

    if resume:
        # a resumed run keeps its own data and settings (from its checkpoint)
        if out is None:
            out = default_path(None, workdir.latest_run(), "-o", must_exist=True).resolve()
        return data or Path(workdir.REAL), out, False
    data = default_path(data, workdir.REAL, "--data", must_exist=True)
    if out is not None:
        return data, out, False
    if not Path(data).exists():
        raise InputError(f"--data {data}: no such file or directory")
    return data, default_path(None, new_run(data, ranks), "-o", False), ranks.main


def _dims(dims: int | None, data: Path, resume: bool) -> int:
    """--dims, else the data's (a resumed run takes its own from the checkpoint)."""
    from cellsynth_cli.ddpm.train import load_training_images

    if dims is None and not resume:
        return load_training_images(data, None).dims
    return dims or 2


def _default_channels(dims: int) -> tuple[int, ...]:
    from cellsynth_cli.diffusion.unet import default_config

    return tuple(default_config(dims).channels)


def _progress_bar(disable: bool) -> Progress:
    return Progress(
        TextColumn("train", style="bold"),
        BarColumn(),
        TextColumn("step {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} it/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )


def _step_reporter(progress: Progress, steps: int):
    """on_step for the library: moves the bar, shows the loss and the steps per second."""
    task = progress.add_task("train", total=steps, loss="-", rate="-")
    started = time.perf_counter()

    def on_step(step: int, loss: float) -> None:
        rate = step / max(time.perf_counter() - started, 1e-9)
        progress.update(task, completed=step, loss=f"{loss:.4f}", rate=f"{rate:.2f}")

    return on_step


def _print_result(project_run, json_out: bool) -> None:
    for warning in project_run.warnings:
        console.print(warning, style="yellow")
    result, latest = project_run.result, project_run.latest
    if json_out:
        print_json(
            {
                "run": str(result.run),
                "step": result.step,
                "final_loss": result.final_loss,
                "seconds": round(result.seconds, 2),
                "device": result.device,
                "stopped_by_time_limit": result.stopped_by_time_limit,
                "latest": str(latest) if latest else None,
            }
        )
        return
    note = " (time limit reached; continue with --resume)" if result.stopped_by_time_limit else ""
    console.print(
        f"trained to step {result.step} in {result.seconds:.0f} s on "
        f"{result.device}, last loss {result.final_loss:.4f}{note}; "
        f"checkpoint in {result.run}"
    )


def register(app: typer.Typer) -> None:
    app.command("train", cls=CellsynthCommand)(train)
