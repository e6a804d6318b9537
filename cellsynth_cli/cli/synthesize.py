"""`cellsynth synthesize`: sketches -> realistic images with the same masks."""

from __future__ import annotations

import typer
from rich.progress import Progress

from cellsynth_cli import workdir
from cellsynth_cli.cli.common import (
    CellsynthCommand,
    Cluster,
    Device,
    JsonOut,
    Overwrite,
    Resume,
    Seed,
    console,
    default_path,
    parse_sizes,
    path_option,
    print_json,
    progress_bar,
)
from cellsynth_cli.defaults import DEVICE, SEED
from cellsynth_cli.diffusion import defaults
from cellsynth_cli.errors import InputError


def synthesize(
    model: path_option(
        ("--model",),
        "Run directory (or checkpoint.pt) of `cellsynth train`, or bundled:NAME for a model "
        "that ships with cellsynth (bundled:dsb2018-nuclei: a small demo model for 2D "
        "fluorescence nuclei, not a general one).",
        f"{workdir.RUNS}/{workdir.LATEST}",
    ) = None,
    sketches: path_option(
        ("--sketches",), "Directory of sketch volumes (`cellsynth simulate` output).", workdir.SIM
    ) = None,
    out: path_option(
        ("-o", "--out"), "Output directory of NAME.zarr volumes.", workdir.SYNTH
    ) = None,
    t_start: int = typer.Option(
        defaults.T_START,
        "--t-start",
        help="Noise level the sketch is pushed to before denoising (1..T). "
        "Small keeps the sketch's structure, large looks more like real data; the paper uses "
        "600 of 1000. `cellsynth noise-analysis` recommends one for your data.",
    ),
    steps: int = typer.Option(
        None,
        "--steps",
        help=f"Network evaluations from t_start to 0, one per step for every --sampler, "
        f"evenly spaced. Default {defaults.SAMPLE_STEPS} "
        + "".join(f"({n} for {s}) " for s, n in defaults.SAMPLER_STEPS.items())
        + "or every step below that: measured as close to every-step sampling as two "
        "every-step seeds are to each other, at a fraction of the time.",
        show_default=False,
    ),
    every_step: bool = typer.Option(
        False,
        "--every-step",
        help="Run every step from t_start (t_start evaluations: the paper's DDPM sampler, "
        "~12x slower than the default at t_start 600).",
    ),
    sampler: str = typer.Option(
        defaults.SAMPLER,
        "--sampler",
        help="auto: "
        + ", ".join(f"{s} for a {d}D model" for d, s in defaults.AUTO_SAMPLER.items())
        + " (measured: docs/benchmarks.md). ddpm: stochastic, the paper's reverse step "
        "(respaced when --steps < t_start). ddim: deterministic DDIM (eta=0), good at few steps. "
        "dpm++2m: DPM-Solver++(2M), a deterministic second-order solver of the same ODE as "
        "ddim. dpm++2m-sde: its stochastic (SDE) variant, the second-order counterpart of "
        "ddpm.",
    ),
    tile: str = typer.Option(
        None,
        "--tile",
        help="Tile size, e.g. 256 or 32,128,128. Default: the whole sketch in one network call "
        "up to 4M voxels (2048^2 or 64x256x256); bigger sketches get the largest tiles within "
        "that budget, blended at every step. Lower it if memory runs out.",
    ),
    overlap: str = typer.Option(
        None, "--overlap", help="Tile overlap. Default: a quarter of the training patch."
    ),
    batch: int = typer.Option(
        defaults.TILE_BATCH,
        "--batch",
        help="Tiles per network call (pays on a GPU; on a CPU cost is per voxel). With "
        "automatic tiles, capped so one call stays within the 4M-voxel budget.",
    ),
    seed: Seed = SEED,
    device: Device = DEVICE,
    precision: str = typer.Option(
        defaults.PRECISION,
        "--precision",
        help="auto: bf16 (a bf16 copy of the network) where the device computes bf16 "
        "natively (CUDA GPUs since Ampere, CPUs with AVX512-BF16 or AMX; ~1.6x faster on "
        "such a CPU), fp32 elsewhere. "
        "fp32 | bf16 force one. The choice is printed and stored in each volume's provenance.",
    ),
    guidance: float = typer.Option(
        None,
        "--guidance",
        help="Conditional models (train --condition pseudo-sketch) only: classifier-free "
        "guidance weight w, eps = eps_uncond + w (eps_cond - eps_uncond). Default "
        f"{defaults.GUIDANCE:g} (the 2D study, docs/study_2d.md: far better segmenters than 1); 1: "
        "follow the sketch as trained (one network call per step, not two); 0: ignore it.",
        show_default=False,
    ),
    guidance_share: float = typer.Option(
        defaults.GUIDANCE_SHARE,
        "--guidance-share",
        help="Conditional models: the share of the steps, noisiest first, that use --guidance "
        "(two network calls each); the others follow the sketch with one call (w = 1). "
        "0.25 of 50 steps = 63 calls instead of 100.",
    ),
    cluster: Cluster = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Turn simulated sketches into realistic images (SDEdit from t_start), keeping the masks.

    Big volumes are processed in overlapping tiles: at every step the noise prediction of all
    tiles is computed in batches and blended with a smooth window, so there are no seams.

    Examples:

        cellsynth synthesize --t-start 600      # runs/latest, sim/ -> synth/
        cellsynth synthesize --model runs/nuclei --sketches sim/ -o synth/
        cellsynth synthesize --model bundled:dsb2018-nuclei --t-start 500
        cellsynth synthesize --t-start 600 --every-step   # the paper's sampler: 600 calls
        cellsynth synthesize --t-start 400 --resume
        cellsynth synthesize --cluster local:2            # 2 worker processes
        cellsynth synthesize --cluster tcp://head:8786    # a running Dask scheduler

    A conditional model (trained with --condition pseudo-sketch) also follows each sketch at
    every step, so its --t-start may be anything up to 1000 (1000: from pure noise).

    With --cluster each volume is one Dask task; a worker loads the model once and writes its
    volumes into the shared output directory. Same --seed, same volumes in every mode.
    """
    from cellsynth_cli.ddpm.synthesize import SynthesisOptions, synthesize_dataset

    model = default_path(model, workdir.latest_run(), "--model", must_exist=True)
    sketches = default_path(sketches, workdir.SIM, "--sketches", must_exist=True)
    out = default_path(out, workdir.SYNTH, "-o", must_exist=False)

    options = SynthesisOptions(
        t_start=t_start,
        steps=_steps(steps, every_step),
        sampler=sampler,
        tile=parse_sizes(tile, "--tile"),
        overlap=parse_sizes(overlap, "--overlap", minimum=0),
        batch=batch,
        seed=seed,
        device=device,
        precision=precision,
        guidance=guidance,
        guidance_share=guidance_share,
    )
    with progress_bar(json_out, status=False, remaining=False) as progress:
        task = progress.add_task("synthesize", total=None)
        if cluster is not None:  # one bar over the volumes, advanced as workers finish them
            from cellsynth_cli.io import list_volumes

            total = len(list_volumes(sketches))
            progress.update(task, description=f"synthesize on {cluster}", total=total)
        results = synthesize_dataset(
            model,
            sketches,
            out,
            options,
            resume=resume,
            overwrite=overwrite,
            on_volume=_volume_reporter(progress, task, json_out),
            on_step=lambda t: progress.advance(task),
            cluster=cluster,
            on_done=(lambda result: progress.advance(task)) if cluster is not None else None,
        )
    if json_out:
        print_json({"out": str(out), "volumes": results})
        return
    done = sum(1 for r in results if not r.get("skipped"))
    skipped = len(results) - done
    console.print(
        f"synthesized {done} volume(s) into {out}"
        + (f", skipped {skipped} already done" if skipped else "")
    )


def _steps(steps: int | None, every_step: bool) -> int | None:
    """--steps, the sampler's default, or None for --every-step (every step below t_start)."""
    if every_step and steps is not None:
        raise InputError("give --steps or --every-step, not both")
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be >= 1, got {steps}")
    return None if every_step else (steps or defaults.AUTO_STEPS)


def _volume_reporter(progress: Progress, task, json_out: bool):
    """on_volume for the library: a bar per volume and one line on its tiles and steps."""

    def on_volume(name: str, n_steps: int, plan: dict) -> None:
        tile = "x".join(map(str, plan["tile"]))
        progress.reset(task, total=n_steps, description=f"synthesize {name}")
        if not json_out:
            progress.console.print(
                f"{name}: {plan['n_tiles']} tile(s) of {tile}, {plan['precision']}, "
                f"{n_steps} steps",
                highlight=False,
            )

    return on_volume


def register(app: typer.Typer) -> None:
    app.command("synthesize", cls=CellsynthCommand)(synthesize)
