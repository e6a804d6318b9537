"""`cellsynth evaluate`: PSNR / SSIM / MAE of synthetic volumes against real ones."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cellsynth_cli.cli.common import console, print_json


def evaluate(
    pred: Path = typer.Option(..., "--pred", help="Synthetic volumes (e.g. synthesize output)."),
    ref: Path = typer.Option(..., "--ref", help="Real volumes; paired with --pred by name."),
    scale: str = typer.Option(
        "ref-percentiles",
        "--scale",
        help="ref-percentiles: both images mapped to [0, 1] "
        "with the reference's 1st/99.8th percentiles and clipped (data range 1). none: raw "
        "values.",
    ),
    data_range: float = typer.Option(
        None,
        "--data-range",
        help="PSNR/SSIM data range; default 1 (ref-percentiles) or the "
        "reference's max - min (none).",
    ),
    mask_labels: bool = typer.Option(
        False,
        "--mask-labels",
        help="Zero everything outside the annotations (reference "
        "masks, else the prediction's) in both images before scoring.",
    ),
    csv_path: Path = typer.Option(None, "--csv", help="Also write the per-volume scores here."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Score synthetic images against the real images they should reproduce.

    Typical: sketches from real annotations (`simulate from-labels`), synthesized, then
    evaluated against the real images. SSIM uses a Gaussian window (sigma 1.5, Wang et al.
    2004, as scikit-image with gaussian_weights=True), true 3D for volumes.

    Example: cellsynth evaluate --pred synth/ --ref real/ --csv scores.csv
    """
    from cellsynth_cli.evaluate import evaluate as run_evaluation
    from cellsynth_cli.evaluate import write_csv

    result = run_evaluation(pred, ref, scale=scale, data_range=data_range, mask_labels=mask_labels)
    if csv_path is not None:
        write_csv(result, csv_path)
    if json_out:
        print_json(result.to_dict())
        return
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
            console.print(f"[yellow]unpaired ({label}):[/] {', '.join(names)}")


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
