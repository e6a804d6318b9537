"""`cellsynth export`: OME-Zarr volumes to TIFF files for Fiji and Cellpose-style tools."""

from __future__ import annotations

from pathlib import Path

import typer

from cellsynth_cli.cli.common import (
    CellsynthCommand,
    JsonOut,
    Overwrite,
    console,
    default_path,
    path_option,
    print_json,
    progress_bar,
)
from cellsynth_cli.errors import InputError

FORMATS = ("tiff",)


def export(
    source: Path = typer.Argument(
        ...,
        help="A directory of volumes (any stage's output, e.g. synth/), or one NAME.zarr.",
        show_default=False,
        metavar="DIR",
    ),
    to: str = typer.Option("tiff", "--to", help="Output format: tiff (ImageJ TIFF)."),
    out: path_option(
        ("-o", "--out"), "Output directory. Default: DIR-tiff/ beside the source directory."
    ) = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Write each volume as NAME.tif (the image; the sketch of a simulated volume) and
    NAME_masks.tif (its instance labels), with the voxel size in ImageJ metadata.

    Fiji opens them calibrated (File > Open); Cellpose and our own stages read such folders
    (NAME.tif + NAME_masks.tif) directly. The OME-Zarr volumes stay the chaining format.

    Examples:

        cellsynth export synth/                       # -> synth-tiff/
        cellsynth export synth/ -o for-fiji/ --overwrite
    """
    from cellsynth_cli import io
    from cellsynth_cli.io.export import export_tiff

    if to not in FORMATS:
        raise InputError(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    named = source if source.name not in ("", ".", "..") else source.resolve()
    out = default_path(out, named.parent / f"{named.name.removesuffix('.zarr')}-tiff", "-o", False)
    with progress_bar(quiet=json_out) as bar:
        task = bar.add_task("export tiff", total=len(io.list_volumes(source)), status="")
        results = export_tiff(
            source,
            out,
            overwrite=overwrite,
            on_volume=lambda name: bar.update(task, advance=1, status=name),
        )
    if json_out:
        print_json({"out": str(out), "volumes": results})
    else:
        console.print(f"exported {len(results)} volume(s) as TIFF into {out}")


def register(app: typer.Typer) -> None:
    app.command("export", cls=CellsynthCommand)(export)
