"""`cellsynth simulate`: sketches + instance masks from a preset, or from real annotations."""

from __future__ import annotations

from pathlib import Path

import typer

from cellsynth_cli.cli.common import console, print_json, progress_bar
from cellsynth_cli.errors import InputError

FROM_LABELS = "from-labels"


def simulate(
    preset: str = typer.Argument(
        ...,
        help="A preset (arabidopsis, celegans, tribolium, mouse-stem, hela) or 'from-labels' "
        "to make sketches from real annotations given with --data.",
        show_default=False,
    ),
    n: int = typer.Option(None, "-n", "--n", help="Number of volumes to simulate."),
    out: Path = typer.Option(..., "-o", "--out", help="Output directory of NAME.zarr volumes."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives identical data."),
    shape: str = typer.Option(
        None, "--shape", help="Volume size Z,Y,X (or Y,X for 2D presets); default the paper's."
    ),
    settings: list[str] = typer.Option(
        [], "--set", help="Override a preset field, e.g. --set n_cells=20,40 (repeatable)."
    ),
    workers: int = typer.Option(1, "--workers", "-j", help="Volumes simulated in parallel."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing volumes."),
    preview: bool = typer.Option(
        False, "--preview", help="Also write NAME_preview.png (middle slice / max projection)."
    ),
    data: Path = typer.Option(
        None,
        "--data",
        help="from-labels only: real images with masks (zarr or NAME.tif + NAME_masks.tif).",
    ),
    show_config: bool = typer.Option(
        False, "--show-config", help="Print the resolved configuration and exit."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Simulate instance masks and sketches (the intensity layout the DDPM turns into images).

    Examples:

      cellsynth simulate celegans -n 50 -o sim/

      cellsynth simulate hela -n 8 -o sim/ --shape 256,256 --set n_cells=20,40 --preview

      cellsynth simulate from-labels --data real/ -o sketches/
    """
    from cellsynth_cli import simulate as lib
    from cellsynth_cli.config import load_preset, parse_overrides, parse_shape, replace

    if preset == FROM_LABELS:
        if data is None:
            raise InputError("from-labels needs --data DIR of real images with masks")
        with progress_bar(quiet=json_out) as bar:
            task = bar.add_task("sketches from labels", total=None, status="")
            results = lib.sketches_from_real(
                data,
                out,
                overwrite=overwrite,
                preview=preview,
                on_volume=lambda name: bar.update(task, advance=1, status=name),
            )
        _report(results, out, json_out)
        return

    config = load_preset(preset)
    changes: dict = parse_overrides(settings)
    if shape is not None:
        new_shape = parse_shape(shape)
        if len(new_shape) != len(config.shape):
            raise InputError(
                f"--shape {shape} has {len(new_shape)} axes but preset {preset} is "
                f"{len(config.shape)}D {tuple(config.shape)}"
            )
        changes["shape"] = new_shape
    config = replace(config, changes, source="--set/--shape")
    if show_config:
        print_json(config.to_dict())
        return
    if n is None:
        raise InputError("-n N (number of volumes) is required")
    with progress_bar(quiet=json_out) as bar:
        task = bar.add_task(f"simulate {preset}", total=n, status="")
        results = lib.simulate_dataset(
            config,
            n,
            out,
            seed=seed,
            overwrite=overwrite,
            workers=workers,
            preview=preview,
            on_volume=lambda name: bar.update(task, advance=1, status=name),
        )
    _report(results, out, json_out)


def _report(results: list[dict], out: Path, json_out: bool) -> None:
    if json_out:
        print_json({"out": str(out), "volumes": results})
        return
    cells = sum(r.get("n_cells", 0) for r in results)
    console.print(f"wrote {len(results)} volume(s) with {cells} cells to {out}")


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
