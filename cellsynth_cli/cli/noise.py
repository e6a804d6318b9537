"""`cellsynth noise-analysis`: choose t_start from data (the paper's Fig. 2)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cellsynth_cli import workdir
from cellsynth_cli.cli.common import (
    CellsynthCommand,
    Device,
    JsonOut,
    Overwrite,
    Seed,
    console,
    default_path,
    parse_sizes,
    path_option,
    print_json,
)
from cellsynth_cli.ddpm.noise_defaults import (
    DEFAULT_BACKWARD_STEPS,
    DEFAULT_BINS,
    DEFAULT_KLD_THRESHOLD,
    DEFAULT_QC_MAX_KLD,
    DEFAULT_TIMESTEPS,
    HIST_RANGE,
)
from cellsynth_cli.defaults import DEVICE, SEED


def noise_analysis(
    images: path_option(("--images",), "Real images (zarr or TIFF).", workdir.REAL) = None,
    sketches: path_option(
        ("--sketches",),
        "Sketches of the same volumes, e.g. `cellsynth simulate from-labels --data IMAGES` "
        "output (paired by name), or simulated sketches (`cellsynth simulate` output; no names "
        "in common: the two sets' histograms are compared as they are, no labels needed). "
        "Default: made in memory from the masks of --images, or, when it has none, "
        "simulated in memory from a nuclei preset fitted to it (as `simulate fit` does).",
    ) = None,
    t: str = typer.Option(
        ",".join(map(str, DEFAULT_TIMESTEPS)), "--t", help="Timesteps to analyse."
    ),
    bins: int = typer.Option(
        DEFAULT_BINS,
        "--bins",
        help=f"Histogram bins on the fixed range [{HIST_RANGE[0]:g}, {HIST_RANGE[1]:g}].",
    ),
    kld_threshold: float = typer.Option(
        DEFAULT_KLD_THRESHOLD,
        "--kld-threshold",
        help=f"Recommend the smallest t with KLD below this. {DEFAULT_KLD_THRESHOLD} "
        "picks t=600 on the paper's A. thaliana curve (KLD 0.053 at 400, 0.004 at 600).",
    ),
    seed: Seed = SEED,
    model: Path = typer.Option(
        None,
        "--model",
        help="A trained run (or bundled:NAME): use its intensity normalisation and also run "
        "the backward analysis (denoise from each t, score against the real image).",
    ),
    steps: int = typer.Option(
        DEFAULT_BACKWARD_STEPS, "--steps", help="Backward: sampler steps per t (fast)."
    ),
    max_volumes: int = typer.Option(
        None, "--max-volumes", help="Backward/forward: only the first N volumes."
    ),
    crop: str = typer.Option(None, "--crop", help="Backward: centre crop, e.g. 128,128."),
    qc: Path = typer.Option(
        None,
        "--qc",
        help="Simulated sketches with masks (`cellsynth simulate` output; a few small ones "
        "suffice): with --model, synthesize them from each t, find the cells in the result "
        "with a classical segmenter (no real labels) and recommend the t that keeps them best "
        "(fewest phantom + vanished cells) among those with KLD <= --qc-max-kld.",
    ),
    qc_max_kld: float = typer.Option(
        DEFAULT_QC_MAX_KLD,
        "--qc-max-kld",
        help="With --qc: the largest KLD a candidate t may have.",
    ),
    device: Device = DEVICE,
    out: Path = typer.Option(
        None, "-o", "--out", help="Directory for noise_analysis.json and noise_analysis.png."
    ),
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Compare forward-noised real images and sketches over t (KLD, Bhattacharyya distance).

    Small t keeps the sketch's structure; large t makes noised sketches and noised real
    images indistinguishable. The recommended t_start is the smallest t whose KLD falls
    below --kld-threshold. Both sets are scaled to [-1, 1] like training does (robust
    percentiles of the real images, or the model's stored normalisation with --model).
    KLD uses histograms with 1e-10 added to every bin probability so empty bins stay finite.

    Tables go to stderr; stdout gets only the recommended t_start (or the JSON with --json),
    so `T=$(cellsynth noise-analysis ...)` works in scripts.

    Without labels: the real images are compared with simulated sketches as two sets
    (histograms need no pairing); the backward analysis needs pairs and is left out.

    Examples:

        cellsynth noise-analysis          # real/, sketches from its masks (or simulated)
        cellsynth noise-analysis --images real/ --sketches sk/ -o analysis/
        cellsynth noise-analysis --model runs/latest --qc sim/ --max-volumes 4 --crop 128,128

    With --qc the QC-aware choice is printed on stdout instead (see --qc).
    """
    from cellsynth_cli.ddpm import noise_analysis as analysis

    images = default_path(images, workdir.REAL, "--images", must_exist=True)
    files = analysis.result_files(out, overwrite)
    timesteps = analysis.parse_timesteps(t)
    with console.status("noise analysis", spinner="dots") as status:
        result = analysis.noise_analysis(
            images,
            sketches,
            timesteps,
            bins=bins,
            kld_threshold=kld_threshold,
            seed=seed,
            model_run=model,
            backward_steps=steps,
            max_volumes=max_volumes,
            crop=parse_sizes(crop, "--crop"),
            device=device,
            on_progress=lambda msg: status.update(f"noise analysis: {msg}"),
            qc_sketches=qc,
            qc_max_kld=qc_max_kld,
        )
    _say_where_sketches_came_from(result, images, sketches)
    data = analysis.write_result(result, files)
    if json_out:
        print_json(data)
        return
    console.print(_forward_table(result))
    if result.backward:
        console.print(_backward_table(result, analysis.BACKWARD_SCORES))
    if result.qc:
        console.print(_qc_table(result))
    typer.echo(str(_print_choice(result, kld_threshold, qc is not None, qc_max_kld)))


def _say_where_sketches_came_from(result, images: Path, sketches: Path | None) -> None:
    if sketches is None:
        made = (
            f"made from the masks of {images}"
            if result.paired
            else f"simulated from a nuclei preset fitted to {images} (it has no masks)"
        )
        console.print(f"--sketches {made} (default)", style="dim", highlight=False)
    elif not result.paired:
        console.print(f"{sketches} and {images} share no names: compared as sets", style="dim")


def _forward_table(result) -> Table:
    table = Table(title=f"forward noise analysis ({result.n_volumes} volume(s))")
    for col in ("t", "KLD", "Bhattacharyya"):
        table.add_column(col, justify="right")
    for ti, k, b in zip(result.timesteps, result.kld, result.bhattacharyya, strict=True):
        mark = " <" if ti == result.recommended_t_start else ""
        table.add_row(str(ti), f"{k:.4f}{mark}", f"{b:.4f}")
    return table


def _backward_table(result, scores: tuple[str, ...]) -> Table:
    table = Table(title="backward: denoised from t, scored against the real image")
    columns = ("PSNR real", "SSIM real", "MAE real", "PSNR sketch", "SSIM sketch", "MAE sketch")
    for col in ("t", *columns):
        table.add_column(col, justify="right")
    for row in result.backward:
        table.add_row(str(row["t"]), *(f"{row[k]:.3f}" for k in scores))
    return table


def _qc_table(result) -> Table:
    table = Table(title="QC: simulated sketches synthesized from t, cells kept")
    for col in ("t", "KLD", "phantom", "vanished"):
        table.add_column(col, justify="right")
    kld_at = dict(zip(result.timesteps, result.kld, strict=True))
    for row in result.qc:
        mark = " <" if row["t"] == result.qc_t_start else ""
        table.add_row(
            str(row["t"]),
            f"{kld_at[row['t']]:.4f}",
            f"{row['phantom']:.1%}{mark}",
            f"{row['vanished']:.1%}",
        )
    return table


def _print_choice(result, kld_threshold: float, with_qc: bool, qc_max_kld: float) -> int | None:
    """Say which t_start is recommended and why; return the one stdout gets."""
    if result.recommended_t_start is None:
        console.print(f"no t has KLD below {kld_threshold}; try a higher --kld-threshold")
    else:
        console.print(
            f"recommended t_start: [bold]{result.recommended_t_start}[/] "
            f"(smallest t with KLD < {kld_threshold})",
            markup=True,  # numbers only
        )
    if not with_qc:
        return result.recommended_t_start
    console.print(
        f"QC-aware t_start: [bold]{result.qc_t_start}[/] (fewest phantom + vanished cells "
        f"with KLD <= {qc_max_kld}); printed on stdout",
        markup=True,
    )
    return result.qc_t_start


def register(app: typer.Typer) -> None:
    app.command("noise-analysis", cls=CellsynthCommand)(noise_analysis)
