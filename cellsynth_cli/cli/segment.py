"""`cellsynth segment`: Cellpose from scratch on synthetic data; predict, score, QC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from cellsynth_cli import workdir
from cellsynth_cli.cli.common import (
    CellsynthCommand,
    CellsynthGroup,
    Cluster,
    Device,
    JsonOut,
    Overwrite,
    Resume,
    Seed,
    console,
    default_path,
    path_option,
    print_json,
    progress_bar,
)
from cellsynth_cli.defaults import DEVICE
from cellsynth_cli.errors import InputError
from cellsynth_cli.segment.config import (
    JUDGE,
    MATCH_BRIGHTNESS,
    MAX_SHARE,
    MIN_SIZE_FRACTION,
    MODE,
    PSEUDO_LABELS,
    TRAINING,
    PseudoLabelling,
)

Mode = Annotated[
    str,
    typer.Option(
        "--mode",
        help="3D images: 3d = Cellpose's 3D mode (the network on the xy, xz and yz planes, z "
        "rescaled by the voxel size's z/x anisotropy, 1 when unknown); stitch = 2D masks per "
        "z slice joined across z (IoU >= 0.5). Ignored for 2D images.",
    ),
]

segment_app = typer.Typer(
    cls=CellsynthGroup,
    help="Segment real images with Cellpose trained (from scratch, nothing downloaded) on "
    "synthetic images + simulated masks; score against ground truth; clean training sets.",
    no_args_is_help=True,
)


@segment_app.command("train", cls=CellsynthCommand)
def train(
    data: path_option(
        ("--data",), "Images with masks, e.g. synthesize output.", workdir.SYNTH
    ) = None,
    out: path_option(("-o", "--out"), "Folder for the segmentation model.", workdir.SEG) = None,
    epochs: int = typer.Option(TRAINING.epochs, "--epochs", help="Training epochs."),
    lr: float = typer.Option(
        TRAINING.learning_rate,
        "--lr",
        help=f"SGD learning rate (momentum 0.9; cellpose's CLI default {TRAINING.learning_rate}).",
    ),
    bsize: int = typer.Option(TRAINING.bsize, "--bsize", help="Training crop size in pixels."),
    batch: int = typer.Option(TRAINING.batch, "--batch", help="Crops per step."),
    images_per_epoch: int = typer.Option(
        None,
        "--images-per-epoch",
        help="Images per epoch; default: all, at least one batch (when it differs from the "
        "number of images, they are drawn with replacement). Steps per epoch = this / --batch "
        "rounded up, so two data sets trained with the same value and --epochs get the same "
        "number of steps.",
    ),
    diameter: float = typer.Option(
        None,
        "--diameter",
        help="Cell diameter in pixels; default the median of the masks (of the xy slices in 3D).",
    ),
    slices: str = typer.Option(
        TRAINING.slices,
        "--slices",
        help="3D volumes: all = xy slices plus xz and yz slices resampled along z to isotropic "
        "voxels (Cellpose's recipe for its 3D mode; at most as many as xy slices per volume); "
        "xy = xy slices only. 2D images are used as they are.",
    ),
    background: path_option(
        ("--background",),
        "Unlabelled real images (e.g. the DDPM's training images): nucleus-free squares of "
        "them, found by the classical segmenter, join training as images with no cells, so "
        "the model sees real background and outlines less of it. No labels are used.",
    ) = None,
    background_crops: int = typer.Option(
        None,
        "--background-crops",
        help="With --background: at most this many squares (2.5 cell diameters a side, "
        "clear of any detected nucleus by a quarter diameter), farthest from nuclei first. "
        f"Default {TRAINING.background_crops}.",
        show_default=False,
    ),
    brightness_jitter: float = typer.Option(
        TRAINING.brightness_jitter,
        "--brightness-jitter",
        help="Multiply each training crop's intensities by a factor drawn log-uniformly from "
        "[1/this, this], so nuclei far brighter (or dimmer) than the training images' own, "
        "as a real image normalised by its percentiles can hold, are still outlined "
        "exactly; 1 = off.",
    ),
    seed: Seed = TRAINING.seed,
    device: Device = DEVICE,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Train Cellpose 3 from scratch. 3D volumes train on their xy, xz and yz slices.

    --seed sets the initial weights (cellpose itself seeds its crops by the epoch number).

    Examples:

        cellsynth segment train                       # synth/ -> seg/
        cellsynth segment train --data synth/ -o seg/ --epochs 100
        cellsynth segment train --slices xy           # 3D: xy slices only
        cellsynth segment train --background real/    # + real background, no labels
    """
    from cellsynth_cli.segment.train import train_segmenter

    data = default_path(data, workdir.SYNTH, "--data", must_exist=True)
    out = default_path(out, workdir.SEG, "-o", must_exist=False)
    if background is None and background_crops is not None:
        raise InputError("--background-crops needs --background (the real images to crop)")

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
            slices=slices,
            overwrite=overwrite,
            seed=seed,
            device=device,
            on_epoch=on_epoch,
            background=background,
            brightness_jitter=brightness_jitter,
            **({} if background_crops is None else {"n_background_crops": background_crops}),
        )
        bar.update(task, completed=epochs)
    if json_out:
        print_json(config)
    else:
        _print_training(config, out, background)


def _print_training(config: dict, out: Path, background: Path | None) -> None:
    planes = ""
    if config["dims"] == 3:
        counts = ", ".join(f"{n} {plane}" for plane, n in config["n_slices"].items())
        planes = f" ({counts} slices)"
    console.print(
        f"trained on {config['n_training_images']} image(s){planes} in "
        f"{config['seconds']} s, final loss {config['final_loss']:.4f}, cell "
        f"diameter {config['diameter']:.1f} px; model in {out}"
    )
    if config["background_crops"]:
        side = config["background_crops"][0]["side"]
        console.print(
            f"with {len(config['background_crops'])} nucleus-free {side} px square(s) of "
            f"{background} as empty images"
        )


@segment_app.command("predict", cls=CellsynthCommand)
def predict(
    model: path_option(("--model",), "Folder of `segment train`.", workdir.SEG) = None,
    images: path_option(("--images",), "Images to segment (zarr or TIFF).", workdir.REAL) = None,
    out: path_option(("-o", "--out"), "Output directory of NAME.zarr.", workdir.PRED) = None,
    mode: Mode = MODE,
    min_size_fraction: float = typer.Option(
        None,
        "--min-size-fraction",
        help="Drop predicted objects smaller than this share of a typical cell (a disc or "
        "ball of the model's training diameter). Default: "
        + ", ".join(f"{f:g} in {d}D" for d, f in MIN_SIZE_FRACTION.items())
        + " (Cellpose's 3D mode leaves fragments inside and beside nuclei).",
        show_default=False,
    ),
    match_brightness: bool = typer.Option(
        MATCH_BRIGHTNESS,
        "--match-brightness/--no-match-brightness",
        help="Redraw cells that are brighter on average, after Cellpose's per-image "
        "normalisation, than the 99th percentile of the nuclei the model trained on, from "
        "a second pass on the image dimmed to match: bright nuclei among dim ones are "
        "otherwise drawn with their glow. The factor goes into each output's provenance "
        "(dimmed_by; 1: not dimmed).",
    ),
    device: Device = DEVICE,
    cluster: Cluster = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Write instance masks (labels/cells) next to each image.

    Examples:

        cellsynth segment predict                     # seg/ on real/ -> pred/
        cellsynth segment predict --model seg/ --images real/ -o pred/ --mode stitch
        cellsynth segment predict --cluster local:2      # 2 worker processes, one image each
    """
    from cellsynth_cli.segment.predict import predict as run_predict

    model = default_path(model, workdir.SEG, "--model", must_exist=True)
    images = default_path(images, workdir.REAL, "--images", must_exist=True)
    out = default_path(out, workdir.PRED, "-o", must_exist=False)
    with console.status("segmenting", spinner="dots") as status:
        rows = run_predict(
            model,
            images,
            out,
            overwrite=overwrite,
            resume=resume,
            mode=mode,
            device=device,
            cluster=cluster,
            on_volume=lambda name: status.update(f"segmented {name}"),
            min_size_fraction=min_size_fraction,
            match_brightness=match_brightness,
        )
    if json_out:
        print_json({"out": str(out), "volumes": rows})
    else:
        done = sum(1 for r in rows if not r.get("skipped"))
        kept = len(rows) - done
        console.print(
            f"segmented {done} volume(s) into {out}"
            + (f", kept {kept} already there (--resume)" if kept else "")
        )


@segment_app.command("pseudo-label", cls=CellsynthCommand)
def pseudo_label(
    model: path_option(("--model",), "Folder of `segment train`.", workdir.SEG) = None,
    images: path_option(
        ("--images",), "Unlabelled real images (zarr or TIFF).", workdir.REAL
    ) = None,
    out: path_option(("-o", "--out"), "Output directory of NAME.zarr.", workdir.PSEUDO) = None,
    crops: Path = typer.Option(
        None,
        "--crops",
        help="Also write the training crops here: squares of --tile-cells cell diameters "
        "centred on confident cells, the other cells in them ignored (for `segment train "
        "--data`).",
        show_default=False,
    ),
    min_iou: float = typer.Option(
        PSEUDO_LABELS.min_iou,
        "--min-iou",
        help="A cell is confident when the mirrored image gives it again with this IoU.",
    ),
    min_size: float = typer.Option(
        PSEUDO_LABELS.min_size, "--min-size", help="Smallest confident cell, in typical cells."
    ),
    max_size: float = typer.Option(
        PSEUDO_LABELS.max_size, "--max-size", help="Largest confident cell, in typical cells."
    ),
    tile_cells: float = typer.Option(
        PSEUDO_LABELS.tile_cells, "--tile-cells", help="Crop side in cell diameters (--crops)."
    ),
    mirror_only: str = typer.Option(
        PSEUDO_LABELS.mirror_only,
        "--mirror-only",
        help="Pixels only the mirrored image's masks call a cell: background, or ignored like "
        "the unconfident cells (not yet measured against background).",
    ),
    mode: Mode = MODE,
    device: Device = DEVICE,
    cluster: Cluster = None,
    resume: Resume = False,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Pseudo-label unlabelled real images with a trained segmenter (self-training).

    Each image is segmented as it is and mirrored; a cell is confident when both find it
    (IoU >= --min-iou) and its size is plausible (a typical cell is a disc or ball of the
    model's training diameter). The output keeps every predicted cell and lists the
    confident ones in its provenance; --crops cuts training squares centred on confident
    cells, in which the unconfident cells are ignored (no loss on their pixels in
    `segment train`: neither cell nor background).

    Examples:

        cellsynth segment pseudo-label --crops crops/      # seg/ on real/ -> pseudo/, crops/
        cellsynth segment train --data crops/ -o seg-r2/   # (with synthetic images beside)
        cellsynth pipeline --rounds 2                      # all of it, with a drift guard
    """
    from cellsynth_cli.segment.pseudo_labels import pseudo_label as run_pseudo_label
    from cellsynth_cli.segment.pseudo_labels import write_training_crops

    settings = PseudoLabelling(min_iou, min_size, max_size, tile_cells, mirror_only)
    settings.check()  # before the default paths: a bad value is the one line shown
    model = default_path(model, workdir.SEG, "--model", must_exist=True)
    images = default_path(images, workdir.REAL, "--images", must_exist=True)
    out = default_path(out, workdir.PSEUDO, "-o", must_exist=False)
    with console.status("pseudo-labelling", spinner="dots") as status:
        rows = run_pseudo_label(
            model,
            images,
            out,
            settings,
            mode=mode,
            resume=resume,
            overwrite=overwrite,
            device=device,
            cluster=cluster,
            on_volume=lambda name: status.update(f"pseudo-labelled {name}"),
        )
    n_crops = write_training_crops(out, crops, tile_cells, overwrite) if crops else None
    if json_out:
        print_json({"out": str(out), "volumes": rows, "crops": n_crops})
        return
    made = [r for r in rows if not r.get("skipped")]
    cells = sum(r["n_cells"] for r in made)
    confident = sum(r["n_confident"] for r in made)
    console.print(
        f"pseudo-labelled {len(made)} image(s) into {out}: {confident} of {cells} cells "
        "confident" + (f"; {n_crops} training crop(s) in {crops}" if crops else "")
    )


@segment_app.command("score", cls=CellsynthCommand)
def score(
    pred: path_option(
        ("--pred",), "Predicted masks (segment predict output).", workdir.PRED
    ) = None,
    ref: path_option(
        ("--ref",), "Ground truth (zarr or NAME.tif + NAME_masks.tif).", workdir.REAL
    ) = None,
    json_out: JsonOut = False,
) -> None:
    """Dice (foreground overlap), AP at IoU 0.5 / 0.75 (TP/(TP+FP+FN)), precision, recall, F1.

    Then where the errors are, summed over volumes: real cells missed (no prediction at IoU
    0.5), found loosely (IoU 0.5-0.75, lost to AP@0.75 only), merged predictions (over two or
    more cells) and predictions on background (mostly outside every cell).

    Example:

        cellsynth segment score               # pred/ against real/
    """
    from cellsynth_cli.measure.error_analysis import describe_errors
    from cellsynth_cli.segment.predict import score as run_score

    pred = default_path(pred, workdir.PRED, "--pred", must_exist=True)
    ref = default_path(ref, workdir.REAL, "--ref", must_exist=True)

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
    console.print(describe_errors(result["errors"]))


@segment_app.command("qc", cls=CellsynthCommand)
def qc(
    model: path_option(("--model",), "Folder of `segment train`.", workdir.SEG) = None,
    data: path_option(("--data",), "Synthetic volumes with simulated masks.", workdir.SYNTH) = None,
    max_phantom: float = typer.Option(
        MAX_SHARE,
        "--max-phantom",
        help="Fail volumes with a larger fraction of predicted cells absent from the masks.",
    ),
    max_vanished: float = typer.Option(
        MAX_SHARE,
        "--max-vanished",
        help="Fail volumes with a larger fraction of simulated cells not found.",
    ),
    move_failed: Path = typer.Option(None, "--move-failed", help="Move failing volumes here."),
    out: Path = typer.Option(None, "-o", "--out", help="Write qc.json here (a file path)."),
    judge: str = typer.Option(
        JUDGE,
        "--judge",
        help="Who segments the synthetic images: model = the Cellpose of --model; classical "
        "= local threshold + watershed at the masks' own cell size (no model, no labels: "
        "cleans an annotation-free training set before any Cellpose exists).",
    ),
    mode: Mode = MODE,
    device: Device = DEVICE,
    cluster: Cluster = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Quality control of synthetic data: phantom and vanished cells per volume.

    3D volumes are segmented as `segment predict` does (same --mode, same default).

    Examples:

        cellsynth segment qc --max-phantom 0.2 --move-failed rejected/
        cellsynth segment qc --judge classical --max-vanished 0.3 --move-failed rejected/
    """
    from cellsynth_cli import io
    from cellsynth_cli.segment.qc import quality_control

    if judge == "model":  # other judges need no model (a wrong name is reported below)
        model = default_path(model, workdir.SEG, "--model", must_exist=True)
    data = default_path(data, workdir.SYNTH, "--data", must_exist=True)
    if out is not None and out.exists() and not overwrite:
        raise InputError(f"{out} already exists (pass --overwrite to replace it)")
    with console.status("quality control", spinner="dots"):
        result = quality_control(
            model,
            data,
            max_phantom,
            max_vanished,
            move_failed,
            device=device,
            mode=mode,
            cluster=cluster,
            judge=judge,
        )
    if out is not None:
        io.write_text(out, json.dumps(result, indent=2), overwrite=overwrite)
    if json_out:
        print_json(result)
        return
    table = Table(
        title=f"synthetic data QC, {judge} judge (IoU >= 0.5 against the simulated masks)"
    )
    for col in ("volume", "phantom", "vanished", "predicted", "simulated", "passed"):
        table.add_column(col, justify="right")
    for r in result["volumes"]:
        table.add_row(
            r["name"],
            f"{r['phantom']:.2f}",
            f"{r['vanished']:.2f}",
            str(r["n_predicted"]),
            str(r["n_simulated"]),
            "yes" if r["passed"] else Text("no", style="red"),
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(segment_app, name="segment")
