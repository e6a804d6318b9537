"""`cellsynth evaluate`: realism of synthetic volumes, paired with real ones by name or as sets."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from cellsynth_cli import workdir
from cellsynth_cli.cli.common import (
    CellsynthCommand,
    JsonOut,
    Overwrite,
    Seed,
    console,
    default_path,
    path_option,
    print_json,
)
from cellsynth_cli.defaults import SEED
from cellsynth_cli.measure.config import SCALE


def evaluate(
    pred: path_option(
        ("--pred",), "Synthetic volumes (e.g. synthesize output).", workdir.SYNTH
    ) = None,
    ref: path_option(("--ref",), "Real volumes (zarr or TIFF).", workdir.REAL) = None,
    unpaired: bool = typer.Option(
        False,
        "--unpaired",
        help="Compare the two sets as distributions even where names pair (automatic when "
        "no name pairs).",
    ),
    scale: str = typer.Option(
        SCALE,
        "--scale",
        help="Paired: ref-percentiles maps both images to [0, 1] with the reference's "
        "1st/99.8th percentiles and clips (data range 1); none compares raw values.",
    ),
    data_range: float = typer.Option(
        None,
        "--data-range",
        help="Paired: PSNR/SSIM data range; default 1 (ref-percentiles) or the reference's "
        "max - min (none).",
    ),
    mask_labels: bool = typer.Option(
        False,
        "--mask-labels",
        help="Paired: zero everything outside the annotations (reference masks, else the "
        "prediction's) in both images before scoring.",
    ),
    csv_path: path_option(("--csv",), "Also write the scores to this CSV file.") = None,
    seed: Seed = SEED,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Score how real synthetic images look.

    **Paired** (volumes with the same name in both sets, e.g. sketches made from real
    annotations with `simulate from-labels`, then synthesized): PSNR, SSIM (Gaussian window,
    sigma 1.5, true 3D for volumes) and MAE per volume.

    **Unpaired** (synthetic images from simulated sketches have no real counterpart; used when
    no name pairs, or with --unpaired): the two sets compared as distributions - histograms
    of intensity, gradient magnitude and local texture (KL divergence, Bhattacharyya
    distance) and the size, brightness and density of the nuclei found by the nucleus
    detector (LoG, or a watershed for large textured nuclei; Kolmogorov-Smirnov distance,
    |ln density ratio|). Each distance is shown beside the
    same distance between two halves of the real set (the floor): near the floor means as
    close to the real set as the real data are to themselves.

    Examples:

        cellsynth evaluate                            # synth/ against real/
        cellsynth evaluate --pred synth/ --ref real/ --csv scores.csv --json
    """
    from cellsynth_cli.measure.evaluate import evaluate as run_evaluation
    from cellsynth_cli.measure.evaluate import names_pair, write_csv
    from cellsynth_cli.measure.realism import compare_sets, write_realism_csv

    pred = default_path(pred, workdir.SYNTH, "--pred", must_exist=True)
    ref = default_path(ref, workdir.REAL, "--ref", must_exist=True)
    if csv_path is not None and csv_path.exists() and not overwrite:
        from cellsynth_cli.errors import InputError

        raise InputError(f"{csv_path} already exists (pass --overwrite to replace it)")
    if unpaired or not names_pair(pred, ref):
        _warn_paired_only(scale, data_range, mask_labels)
        if not unpaired:
            console.print(
                f"no volume names pair between {pred} and {ref}: comparing "
                "the sets as distributions (--unpaired)",
                style="dim",
            )
        with console.status("comparing image sets", spinner="dots") as status:
            realism = compare_sets(
                pred, ref, seed=seed, on_volume=lambda n: status.update(f"read {n}")
            )
        if csv_path is not None:
            write_realism_csv(realism, csv_path, overwrite=overwrite)
        if json_out:
            print_json(realism.to_dict())
        else:
            _print_realism(realism, pred, ref)
        return

    result = run_evaluation(pred, ref, scale=scale, data_range=data_range, mask_labels=mask_labels)
    if csv_path is not None:
        write_csv(result, csv_path, overwrite=overwrite)
    if json_out:
        print_json({"mode": "paired", **result.to_dict()})
    else:
        _print_paired(result, pred, ref, scale)


def _warn_paired_only(scale: str, data_range: float | None, mask_labels: bool) -> None:
    given = (
        ("--scale", scale != SCALE),
        ("--data-range", data_range is not None),
        ("--mask-labels", mask_labels),
    )
    paired_only = [flag for flag, was_given in given if was_given]
    if paired_only:
        console.print(f"{', '.join(paired_only)}: only for paired volumes; ignored", style="yellow")


def _print_paired(result, pred: Path, ref: Path, scale: str) -> None:
    table = Table(title=f"evaluate {pred} against {ref} (scale: {scale})")
    for col in ("volume", "PSNR (dB)", "SSIM", "MAE"):
        table.add_column(col, justify="right")
    for row in result.rows:
        table.add_row(row["name"], f"{row['psnr']:.2f}", f"{row['ssim']:.4f}", f"{row['mae']:.4f}")
    s = result.summary
    table.add_row(
        "mean ± sd",
        f"{s['psnr']['mean']:.2f} ± {s['psnr']['sd']:.2f}",
        f"{s['ssim']['mean']:.4f} ± {s['ssim']['sd']:.4f}",
        f"{s['mae']['mean']:.4f} ± {s['mae']['sd']:.4f}",
    )
    console.print(table)
    for label, names in (
        ("only in --pred", result.unpaired_pred),
        ("only in --ref", result.unpaired_ref),
    ):
        if names:
            console.print(Text.assemble((f"unpaired ({label}):", "yellow"), " ", ", ".join(names)))


LABELS = {
    "intensity_kld": "intensity KLD",
    "intensity_bhattacharyya": "intensity Bhattacharyya",
    "gradient_kld": "gradient KLD",
    "gradient_bhattacharyya": "gradient Bhattacharyya",
    "texture_kld": "texture KLD",
    "texture_bhattacharyya": "texture Bhattacharyya",
    "radius_ks": "nucleus radius KS",
    "brightness_ks": "nucleus brightness KS",
    "density_log_ratio": "nucleus density |ln ratio|",
}


def _number(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _print_realism(realism, pred, ref) -> None:
    table = Table(
        title=f"{pred} ({realism.n_pred} volumes) as a set, against {ref} ({realism.n_ref})"
    )
    table.add_column("distance", no_wrap=True)
    for col in ("synthetic vs real", "floor: real half vs half", "x floor"):
        table.add_column(col, justify="right")
    for row in realism.scores:
        ratio = "n/a" if row["ratio"] is None else f"{row['ratio']:.1f}"
        label = LABELS.get(row["name"], row["name"])
        table.add_row(label, _number(row["value"]), _number(row["floor"]), ratio)
    console.print(table)
    objects = Table(title=f"nuclei found by the nucleus detector ({realism.detector})")
    for col in ("set", "nuclei", "median radius (px)", "median brightness", "per megavoxel"):
        objects.add_column(col, justify="right")
    for key, label in (("pred", "synthetic"), ("ref", "real")):
        o = realism.objects[key]
        objects.add_row(
            label,
            str(o["n"]),
            _number(o["radius_median"], 1),
            _number(o["brightness_median"], 3),
            f"{o['per_megavoxel']:.0f}",
        )
    console.print(objects)
    console.print(
        "x floor: how many times farther from the real set than one half of the real set is "
        "from the other, at the same amount of data (about 1: as close as the real data are "
        "to themselves; with few volumes up to ~3 happens by chance)."
    )


def register(app: typer.Typer) -> None:
    app.command("evaluate", cls=CellsynthCommand)(evaluate)
