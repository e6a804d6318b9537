"""`cellsynth segment`: Cellpose from scratch on synthetic data; predict, score, QC."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from cellsynth_cli.cli.common import CellsynthGroup, console, print_json, progress_bar

segment_app = typer.Typer(
    cls=CellsynthGroup,
    help="Segment real images with Cellpose trained (from scratch, nothing downloaded) on "
    "synthetic images + simulated masks; score against ground truth; clean training sets.",
    no_args_is_help=True,
)


@segment_app.command("train")
def train(
    data: Path = typer.Option(..., "--data", help="Images with masks, e.g. synthesize output."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for the segmentation model."),
    epochs: int = typer.Option(100, "--epochs", help="Training epochs."),
    lr: float = typer.Option(
        0.2, "--lr", help="SGD learning rate (momentum 0.9; cellpose's CLI default 0.2)."
    ),
    bsize: int = typer.Option(224, "--bsize", help="Training crop size in pixels."),
    batch: int = typer.Option(8, "--batch", help="Crops per step."),
    images_per_epoch: int = typer.Option(
        None,
        "--images-per-epoch",
        help="Images per epoch; default: all, at least one batch (when it differs from the "
        "number of images, they are drawn with replacement). Steps per epoch = this / --batch "
        "rounded up, so two data sets trained with the same value and --epochs get the same "
        "number of steps.",
    ),
    diameter: float = typer.Option(
        None, "--diameter", help="Cell diameter in pixels; default the median of the masks."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed for the initial weights (cellpose seeds its crops by epoch)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing model."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Train Cellpose 3 from scratch. 3D volumes train on their z slices.

    Example: cellsynth segment train --data synth/ -o seg/ --epochs 100
    """
    from cellsynth_cli.segment import train_segmenter

    with progress_bar(quiet=json_out) as bar:
        task = bar.add_task("train cellpose", total=epochs, status="")

        def on_epoch(epoch: int, loss: float) -> None:
            bar.update(task, completed=epoch + 1, status=f"loss {loss:.4f}")

        config = train_segmenter(
            data,
            out,
            epochs=epochs,
            learning_rate=lr,
            bsize=bsize,
            batch=batch,
            images_per_epoch=images_per_epoch,
            diameter=diameter,
            overwrite=overwrite,
            seed=seed,
            on_epoch=on_epoch,
        )
        bar.update(task, completed=epochs)
    if json_out:
        print_json(config)
    else:
        console.print(
            f"trained on {config['n_training_images']} image(s) in "
            f"{config['seconds']} s, final loss {config['final_loss']:.4f}, cell "
            f"diameter {config['diameter']:.1f} px; model in {out}"
        )


@segment_app.command("predict")
def predict(
    model: Path = typer.Option(..., "--model", help="Folder of `segment train`."),
    images: Path = typer.Option(..., "--images", help="Images to segment (zarr or TIFF)."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory of NAME.zarr."),
    do_3d: bool = typer.Option(
        False, "--do-3d", help="3D: Cellpose's 3D mode instead of stitching 2D masks across z."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Write instance masks (labels/cells) next to each image."""
    from cellsynth_cli.segment import predict as run_predict

    with console.status("segmenting", spinner="dots") as status:
        rows = run_predict(
            model,
            images,
            out,
            overwrite=overwrite,
            do_3d=do_3d,
            on_volume=lambda name: status.update(f"segmented {name}"),
        )
    if json_out:
        print_json({"out": str(out), "volumes": rows})
    else:
        console.print(f"segmented {len(rows)} volume(s) into {out}")


@segment_app.command("score")
def score(
    pred: Path = typer.Option(..., "--pred", help="Predicted masks (segment predict output)."),
    ref: Path = typer.Option(..., "--ref", help="Ground truth (zarr or NAME_masks.tif)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Dice (foreground overlap), AP at IoU 0.5 / 0.75 (TP/(TP+FP+FN)), precision, recall, F1."""
    from cellsynth_cli.segment import score as run_score

    result = run_score(pred, ref)
    if json_out:
        print_json(result)
        return
    keys = ("dice", "ap@0.5", "ap@0.75", "precision", "recall", "f1")
    table = Table(title=f"segmentation of {pred} against {ref}")
    table.add_column("volume")
    for k in keys:
        table.add_column(k, justify="right")
    for row in result["volumes"]:
        table.add_row(row["name"], *(f"{row[k]:.3f}" for k in keys))
    s = result["summary"]
    table.add_row("mean ± sd", *(f"{s[k]['mean']:.3f} ± {s[k]['sd']:.3f}" for k in keys))
    console.print(table)


@segment_app.command("qc")
def qc(
    model: Path = typer.Option(..., "--model", help="Folder of `segment train`."),
    data: Path = typer.Option(..., "--data", help="Synthetic volumes with simulated masks."),
    max_phantom: float = typer.Option(
        1.0,
        "--max-phantom",
        help="Fail volumes with a larger fraction of predicted cells absent from the masks.",
    ),
    max_vanished: float = typer.Option(
        1.0,
        "--max-vanished",
        help="Fail volumes with a larger fraction of simulated cells not found.",
    ),
    move_failed: Path = typer.Option(None, "--move-failed", help="Move failing volumes here."),
    out: Path = typer.Option(None, "-o", "--out", help="Write qc.json here (a file path)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Quality control of synthetic data: phantom and vanished cells per volume."""
    from cellsynth_cli.segment import quality_control

    with console.status("quality control", spinner="dots"):
        result = quality_control(model, data, max_phantom, max_vanished, move_failed)
    if out is not None:
        out.write_text(json.dumps(result, indent=2))
    if json_out:
        print_json(result)
        return
    table = Table(title="synthetic data QC (IoU >= 0.5 against the simulated masks)")
    for col in ("volume", "phantom", "vanished", "predicted", "simulated", "passed"):
        table.add_column(col, justify="right")
    for r in result["volumes"]:
        table.add_row(
            r["name"],
            f"{r['phantom']:.2f}",
            f"{r['vanished']:.2f}",
            str(r["n_predicted"]),
            str(r["n_simulated"]),
            "yes" if r["passed"] else "[red]no[/]",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(segment_app, name="segment")
