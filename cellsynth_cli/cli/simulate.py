"""`cellsynth simulate`: sketches + instance masks from a preset (`simulate PRESET`), a preset
fitted to real images (`simulate fit`), or sketches of real annotations (`simulate from-labels`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cellsynth_cli import workdir
from cellsynth_cli.cli.common import (
    CellsynthCommand,
    CellsynthGroup,
    Cluster,
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
from cellsynth_cli.defaults import SEED
from cellsynth_cli.errors import InputError
from cellsynth_cli.simulate.config import FIT_SPREAD

PRESET_COMMAND = "preset"  # hidden: `simulate PRESET ...` runs it
GENERIC = "nuclei"  # the one bundled preset that is 2D or 3D by --shape


class SimulateGroup(CellsynthGroup):
    """`simulate fit` and `simulate from-labels` are subcommands; anything else names a preset
    (`simulate hela -n 8`, `simulate mine.toml -n 50`) and runs the hidden preset command."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = [PRESET_COMMAND, *args]
        return super().parse_args(ctx, args)

    def get_usage(self, ctx: Any) -> str:
        return f"Usage: {ctx.command_path} [OPTIONS] (PRESET | fit | from-labels) ..."


class _PresetContext(CellsynthCommand.context_class):
    """The preset command is typed without its name: its path is the group's, so help and
    usage errors say `cellsynth simulate [OPTIONS] PRESET` and `cellsynth simulate --help`."""

    @property
    def command_path(self) -> str:
        return self.parent.command_path if self.parent else super().command_path


class SiblingOptionCommand(CellsynthCommand):
    """An option of a sibling subcommand given here names the subcommand it belongs to."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except Exception as exc:
            option = getattr(exc, "option_name", None)
            owner = _sibling_with_option(ctx, option) if option else None
            if owner is None:
                raise
            raise InputError(f"{option} is for `simulate {owner}`") from None


def _sibling_with_option(ctx: Any, option: str) -> str | None:
    group = ctx.parent.command if ctx.parent else None
    for name, command in getattr(group, "commands", {}).items():
        if command is not ctx.command and any(option in p.opts for p in command.params):
            return "PRESET" if name == PRESET_COMMAND else name
    return None


simulate_app = typer.Typer(
    cls=SimulateGroup,
    help="Simulate instance masks and sketches (the intensity layout the DDPM turns into "
    "images).\n\n"
    "`cellsynth simulate PRESET -n N` simulates from a preset (nuclei, arabidopsis, celegans, "
    "tribolium, mouse-stem, hela, or a preset .toml file; `cellsynth simulate hela --help` "
    "for its options); `simulate fit` estimates a preset from your unannotated images; "
    "`simulate from-labels` makes sketches of real annotations.",
)


class PresetCommand(SiblingOptionCommand):
    context_class = _PresetContext


@simulate_app.command(PRESET_COMMAND, cls=PresetCommand, hidden=True)
def simulate(
    preset: str = typer.Argument(
        ...,
        help="A preset (nuclei, arabidopsis, celegans, tribolium, mouse-stem, hela) or the path "
        "of a preset .toml file (e.g. one `simulate fit` wrote).",
        show_default=False,
        metavar="PRESET",
    ),
    n: int = typer.Option(None, "-n", "--n", help="Number of volumes to simulate."),
    out: path_option(("-o", "--out"), "Output directory of NAME.zarr volumes.", workdir.SIM) = None,
    seed: Seed = SEED,
    shape: str = typer.Option(
        None, "--shape", help="Volume size Z,Y,X (or Y,X for 2D presets); default the paper's."
    ),
    settings: list[str] = typer.Option(
        [], "--set", help="Override a preset field, e.g. --set n_cells=20,40 (repeatable)."
    ),
    cluster: Cluster = None,
    workers: int = typer.Option(
        None, "--workers", "-j", help="Shorthand for --cluster local:J.", show_default=False
    ),
    overwrite: Overwrite = False,
    resume: Resume = False,
    preview: bool = typer.Option(
        False, "--preview", help="Also write NAME_preview.png (middle slice / max projection)."
    ),
    show_config: bool = typer.Option(
        False, "--show-config", help="Print the resolved configuration and exit."
    ),
    json_out: JsonOut = False,
) -> None:
    """Simulate N volumes from a preset.

    Volume i of a run always gets the same random numbers (from --seed and i), so --resume
    after an interruption, or -n 100 after -n 50 with --resume, gives the same data as one run.

    Examples:

        cellsynth simulate celegans -n 50                # into sim/
        cellsynth simulate celegans -n 50 --cluster local:4   # 4 worker processes
        cellsynth simulate hela -n 8 --shape 256,256 --set n_cells=20,40
        cellsynth simulate mine.toml -n 50               # a preset `simulate fit` wrote
    """
    from cellsynth_cli.simulate import dataset as lib
    from cellsynth_cli.simulate.config import load_preset, parse_overrides, parse_shape, replace

    if workers is not None:
        if cluster is not None:
            raise InputError("give --cluster or --workers, not both (-j J = --cluster local:J)")
        cluster = f"local:{workers}"
    config = load_preset(preset)
    changes: dict = parse_overrides(settings)
    if shape is not None:
        new_shape = parse_shape(shape)
        if len(new_shape) != len(config.shape):
            if config.preset != GENERIC:
                raise InputError(
                    f"--shape {shape} has {len(new_shape)} axes but preset {preset} is "
                    f"{len(config.shape)}D {tuple(config.shape)}"
                )
            # the generic preset works in 2D and 3D (isotropic voxels follow the shape)
            changes.setdefault("voxel_size", [config.voxel_size[0]] * len(new_shape))
        changes["shape"] = new_shape
    config = replace(config, changes, source="--set/--shape")
    if show_config:
        print_json(config.to_dict())
        return
    if n is None:
        raise InputError("-n N (number of volumes) is required")
    out = default_path(out, workdir.SIM, "-o", must_exist=False)
    with progress_bar(quiet=json_out) as bar:
        task = bar.add_task(f"simulate {preset}", total=n, status="")
        results = lib.simulate_dataset(
            config,
            n,
            out,
            seed=seed,
            overwrite=overwrite,
            resume=resume,
            cluster=cluster,
            preview=preview,
            on_volume=lambda name: bar.update(task, advance=1, status=name),
        )
    _report(results, out, json_out)


@simulate_app.command("fit", cls=SiblingOptionCommand)
def fit(
    data: path_option(("--data",), "Real images (no masks needed).", workdir.REAL) = None,
    out: path_option(
        ("-o", "--out"),
        "The preset file to write (default fit-DATA.toml), with a picture of the detections "
        "beside it (.png).",
    ) = None,
    spread: str = typer.Option(
        FIT_SPREAD,
        "--spread",
        help="'central' ranges span the usual nucleus (20-80 % of the detected sizes, "
        "2-98 % of brightness, 10-90 % of aspect); 'wide' ones 2-98 % of each, so rare "
        "small, large, dim and bright nuclei are simulated too.",
    ),
    radius: float = typer.Option(
        None,
        "--radius",
        help="The typical nucleus radius in pixels, if the fit's picture shows pieces of nuclei "
        "(it decides how much the images are shrunk for the detector; sizes are still "
        "measured). Default: measured.",
    ),
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Estimate a preset for the generic `nuclei` simulator from your unannotated images.

    It finds the nuclei (a LoG blob detector, or a watershed for large textured nuclei) and
    writes radius, aspect ratio, z extent, count per image, brightness on the sketch scale,
    foreground, shape and voxel size. Check its picture before simulating from it; it warns
    when the nuclei found do not make up the images' bright foreground.

    Examples:

        cellsynth simulate fit --data real/ -o mine.toml
        cellsynth simulate fit --data real/ -o mine.toml --spread wide  # rare nuclei too
        cellsynth simulate mine.toml -n 50
    """
    _fit(data, out, overwrite, json_out, spread, radius)


@simulate_app.command("from-labels", cls=SiblingOptionCommand)
def from_labels(
    data: path_option(
        ("--data",),
        "Real images with masks (zarr, or NAME.tif + NAME_masks.tif).",
        workdir.REAL,
    ) = None,
    out: path_option(
        ("-o", "--out"), "Output directory of NAME.zarr sketches.", workdir.SKETCHES
    ) = None,
    overwrite: Overwrite = False,
    resume: Resume = False,
    preview: bool = typer.Option(
        False, "--preview", help="Also write NAME_preview.png (middle slice / max projection)."
    ),
    json_out: JsonOut = False,
) -> None:
    """Sketches of real annotations: each cell filled with its mean intensity, masks kept.

    Example:

        cellsynth simulate from-labels --data real/ -o sketches/
    """
    from cellsynth_cli.simulate import dataset as lib

    data = default_path(data, workdir.REAL, "--data", must_exist=True)
    out = default_path(out, workdir.SKETCHES, "-o", must_exist=False)
    with progress_bar(quiet=json_out) as bar:
        task = bar.add_task("sketches from labels", total=None, status="")
        results = lib.sketches_from_real(
            data,
            out,
            overwrite=overwrite,
            resume=resume,
            preview=preview,
            on_volume=lambda name: bar.update(task, advance=1, status=name),
        )
    _report(results, out, json_out)


def _fit(
    data: Path | None,
    out: Path | None,
    overwrite: bool,
    json_out: bool,
    spread: str,
    radius: float | None,
) -> None:
    from rich.table import Table

    from cellsynth_cli import io
    from cellsynth_cli.simulate.fit import fit_nuclei, save_fit_picture, to_toml

    data = default_path(data, workdir.REAL, "--data", must_exist=True)
    out = default_path(out, Path(f"fit-{data.resolve().stem}.toml"), "-o", must_exist=False)
    if out.suffix.lower() != ".toml":
        raise InputError(f"-o {out}: simulate fit writes a preset file; give a NAME.toml path")
    picture = out.with_suffix(".png")
    for path in (out, picture):
        if path.exists() and not overwrite:
            raise InputError(f"{path} already exists (pass --overwrite to replace it)")
    with console.status("finding nuclei", spinner="dots") as status:
        fit = fit_nuclei(
            data,
            on_volume=lambda name: status.update(f"found nuclei in {name}"),
            spread=spread,
            radius=radius,
        )
    io.write_text(out, to_toml(fit, data), overwrite=overwrite)
    save_fit_picture(picture, fit, data)
    if json_out:
        print_json(
            {
                "preset": str(out),
                "picture": str(picture),
                "estimates": fit.estimates,
                "config": fit.config.to_dict(),
                "warnings": fit.warnings,
            }
        )
        return
    table = Table(title=f"nuclei estimated from {data} (no masks used)")
    table.add_column("estimate")
    table.add_column("value", justify="right")
    for key, value in fit.estimates.items():
        table.add_row(key, str(value))
    console.print(table)
    for warning in fit.warnings:
        console.print(f"warning: {warning}", style="yellow", highlight=False)
    console.print(
        f"wrote the preset {out} and the detections picture {picture}; simulate with "
        f"`cellsynth simulate {out} -n 50`"
    )
    # nuclei were found: the study's best recipe applies (it needs nuclei-like data)
    console.print(
        f"for these nuclei the study's best recipe is `cellsynth pipeline --data {data}` (one "
        "command), or by hand: `train --condition pseudo-sketch`, `simulate PRESET --set "
        "touching_fraction=0.25`, `synthesize --t-start 1000` (guided), `segment train "
        f"--background {data}`",
        highlight=False,
    )


def _report(results: list[dict], out: Path, json_out: bool) -> None:
    if json_out:
        print_json({"out": str(out), "volumes": results})
        return
    done = [r for r in results if not r.get("skipped")]
    cells = sum(r.get("n_cells", 0) for r in done)
    skipped = len(results) - len(done)
    console.print(
        f"wrote {len(done)} volume(s) with {cells} cells to {out}"
        + (f", kept {skipped} already there (--resume)" if skipped else "")
    )


def register(app: typer.Typer) -> None:
    app.add_typer(simulate_app, name="simulate")
