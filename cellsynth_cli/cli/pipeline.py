"""`cellsynth pipeline`: your own unlabelled images -> a segmentation model and masks."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.progress import Progress

from cellsynth_cli import workdir
from cellsynth_cli.cli.common import (
    EXIT_INTERRUPTED,
    CellsynthCommand,
    Cluster,
    Device,
    JsonOut,
    Overwrite,
    console,
    print_json,
    progress_bar,
    sigterm_as_interrupt,
)
from cellsynth_cli.defaults import DEVICE
from cellsynth_cli.pipeline import recipe as recipes
from cellsynth_cli.pipeline.recipe import RECIPE_FILE, STAGE_NAMES


def pipeline(
    project: Path = typer.Argument(
        Path("."), help="Project directory (outputs land here). Default: the working directory."
    ),
    data: Path = typer.Option(
        None,
        "--data",
        help="Your real images, unlabelled (zarr or TIFF; masks beside them are not read). "
        "Default: PROJECT/real/.",
        show_default=False,
    ),
    budget: str = typer.Option(
        None,
        "--budget",
        help="How much work: smoke (every stage in ~30 s, a plumbing check that segments "
        "nothing well), quick (~8 min: a first look), standard (~45 min: the study's recipe "
        "with 5/6 of its DDPM steps), full (the study's recipe as measured, ~50 min). Times for "
        "a 256 x 256 image on 2 CPU cores; larger images take longer. Default: full, or the "
        f"budget in PROJECT/{RECIPE_FILE}.",
        show_default=False,
    ),
    settings: list[str] = typer.Option(
        [],
        "--set",
        help="Change one setting, SECTION.KEY=VALUE (repeatable), e.g. --set train.steps=2000 "
        "--set simulate.n=32; kept in the project's recipe. --show-recipe lists them all.",
    ),
    rounds: int = typer.Option(
        None,
        "--rounds",
        help="Self-training: 1 trains the segmenter on synthetic images only; N > 1 adds "
        "rounds 2..N, each trained on the synthetic images plus crops of your images "
        "pseudo-labelled by the round before (cells it finds again in the mirrored image). "
        "A round is kept only when it finds more such cells than the one before and no fewer "
        "cells. Default 1: on the bundled 2D data round 2 missed more nuclei than round 1 in "
        "each of three seeds; it helps a segmenter trained on real labels (docs/experiments.md). "
        "Same as --set rounds.n=N; kept in the project's recipe.",
        show_default=False,
        min=1,
    ),
    recipe_file: Path = typer.Option(
        None,
        "--recipe",
        help=f"A recipe TOML to use instead of PROJECT/{RECIPE_FILE} (copied there).",
        show_default=False,
    ),
    from_stage: str = typer.Option(
        None,
        "--from",
        help=f"Rerun this stage and every one after it: {', '.join(STAGE_NAMES)}.",
        show_default=False,
    ),
    score: Path = typer.Option(
        None,
        "--score",
        help="Labelled images (image + masks) to score the segmenter on in the report; they "
        "are never used for training.",
        show_default=False,
    ),
    show_recipe: bool = typer.Option(
        False, "--show-recipe", help="Print every setting of the recipe as TOML and exit."
    ),
    cluster: Cluster = None,
    device: Device = DEVICE,
    overwrite: Overwrite = False,
    json_out: JsonOut = False,
) -> None:
    """Segment your own images without labels: fit -> train -> simulate -> t_start ->
    synthesize -> clean -> segment -> predict -> rounds -> report, in one command.

    Nothing reads a mask a person drew: a nuclei preset is fitted to your images, a DDPM
    learns them (conditioned on pseudo-sketches), simulated nuclei become realistic images
    with known masks, and Cellpose learns from those (plus nucleus-free squares of your
    images). Outputs: fit.toml, runs/ddpm/, sim/, synth/, seg/ (the Cellpose model), pred/
    (your images segmented), report.md / report.png.

    A rerun skips every stage whose settings and inputs are unchanged, continues a stage cut
    short (Ctrl-C, a crash, a kill) where it stopped, and after a changed setting reruns that
    stage and the ones that depend on it. The recipe (PROJECT/pipeline.toml) holds the budget
    and your changes; the defaults are the best row of the 2D study (docs/study_2d.md).

    Examples:

        cellsynth pipeline --budget quick          # ./real/ -> ./sim, ./synth, ./seg, ./pred
        cellsynth pipeline myproject --data /data/nuclei --budget standard
        cellsynth pipeline --set simulate.n=32     # more synthetic images; reruns from there
        cellsynth pipeline --from segment          # retrain Cellpose and predict again
        cellsynth pipeline --rounds 2              # + a round on your pseudo-labelled images
        cellsynth pipeline --budget smoke --show-recipe
    """
    from cellsynth_cli.pipeline.run import (
        check_project,
        project_recipe,
        run_pipeline,
        save_recipe,
    )

    changes = recipes.parse_settings(settings)
    if rounds is not None:
        changes = recipes.merge(changes, {"rounds": {"n": rounds}})
    overrides = project_recipe(project, recipe_file, changes, budget)
    recipe = recipes.resolve(overrides, "recipe")
    if show_recipe:
        typer.echo(recipes.full_toml(recipe), nl=False)
        return
    data = data if data is not None else project / workdir.REAL
    check_project(project, data, from_stage, overwrite)
    project.mkdir(parents=True, exist_ok=True)
    save_recipe(project, overrides)
    started = time.perf_counter()
    with progress_bar(json_out, count=False, remaining=False) as progress:
        reporter = _StageReporter(progress, json_out)
        try:
            with sigterm_as_interrupt():
                summary = run_pipeline(
                    project,
                    data,
                    recipe,
                    from_stage=from_stage,
                    score_against=score,
                    cluster=cluster,
                    device=device,
                    overwrite=overwrite,
                    on_stage=reporter.on_stage,
                    on_progress=reporter.on_progress,
                )
        except KeyboardInterrupt:
            progress.stop()
            # the stage's started-stamp stays: the same command continues inside it
            console.print(
                f"interrupted in {reporter.stage}; run the same command again to continue"
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
    _print_result(project, recipe.budget, summary, time.perf_counter() - started, score, json_out)


class _StageReporter:
    """One bar for the stage running now, a line when a stage starts, is skipped or ends."""

    def __init__(self, progress: Progress, json_out: bool):
        self.progress, self.json_out = progress, json_out
        self.task = progress.add_task("pipeline", total=None, status="")
        self.stage = "pipeline"

    def on_stage(self, name: str, status: str) -> None:
        self.stage = name
        if not self.json_out:
            self.progress.console.print(f"{name}: {status}", highlight=False)
        self.progress.reset(self.task, total=None, description=name, status="")

    def on_progress(self, name: str, message: str, done: float | None, total: float | None):
        self.progress.update(self.task, completed=done or 0, total=total, status=message)


def _print_result(
    project: Path, budget: str, summary: dict, seconds: float, score: Path | None, json_out: bool
) -> None:
    from cellsynth_cli.pipeline.report import REPORT_MD

    if json_out:
        stages = {
            name: {k: row.get(k) for k in ("status", "seconds", "result", "version")}
            for name, row in summary.items()
        }
        print_json(
            {
                "project": str(project),
                "budget": budget,
                "seconds": round(seconds, 1),
                "stages": stages,
                "report": str(project / REPORT_MD),
            }
        )
        return
    kept = summary["rounds"]["result"]
    rounds = f" (self-training round {kept['kept']})" if len(kept["rounds"]) > 1 else ""
    console.print(
        f"done in {seconds:.0f} s: the segmenter is {project / kept['seg']}{rounds}, your "
        f"images segmented in {project / kept['pred']}, the report {project / REPORT_MD}"
    )
    for warning in summary["report"]["result"].get("warnings", []):
        console.print(f"warning: {warning}", style="yellow", highlight=False)
    scores = summary["report"]["result"]["scores"]
    if scores:
        console.print(
            f"scored on {score}: "
            + ", ".join(f"{k} {scores[k]['mean']:.3f}" for k in ("dice", "ap@0.5", "ap@0.75", "f1"))
        )


def register(app: typer.Typer) -> None:
    app.command("pipeline", cls=CellsynthCommand)(pipeline)
