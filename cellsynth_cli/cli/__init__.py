"""The `cellsynth` command: one Typer app, one sub-module per command.

Heavy libraries (torch, cellpose) are imported inside the commands so `--help` is instant.
"""

from __future__ import annotations

import typer

from cellsynth_cli import __version__
from cellsynth_cli.cli import (
    evaluate,
    export,
    noise,
    pipeline,
    segment,
    simulate,
    synthesize,
    train,
)
from cellsynth_cli.cli.common import CellsynthGroup

app = typer.Typer(
    cls=CellsynthGroup,
    name="cellsynth",
    help=(
        "Fully-annotated synthetic microscopy data with denoising diffusion models.\n\n"
        "Pipeline: simulate sketches + masks -> train a DDPM on real images -> "
        "noise-analysis picks t_start -> synthesize realistic images that keep the masks -> "
        "evaluate realism -> segment (Cellpose trained on synthetic data only); export to TIFF "
        "for Fiji.\n\n"
        "Every stage reads and writes a directory of OME-Zarr volumes (one NAME.zarr per "
        "volume), so stages chain through files."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cellsynth {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """cellsynth: see the commands below; each has its own --help."""


simulate.register(app)
train.register(app)
synthesize.register(app)
noise.register(app)
evaluate.register(app)
segment.register(app)
export.register(app)
pipeline.register(app)


def main() -> None:
    app()
