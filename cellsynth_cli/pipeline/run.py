"""`cellsynth pipeline`: from unlabelled real images to a segmentation model and masks.

The stages run in order; each is skipped when its stamp (stamps.py) matches, so a rerun
continues at the first unfinished stage, and a changed setting reruns that stage and the
stages that read its outputs, nothing else (make's rule, not a workflow engine).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from cellsynth_cli import __version__, io, workdir
from cellsynth_cli.defaults import DEVICE
from cellsynth_cli.errors import InputError
from cellsynth_cli.pipeline import recipe as recipes
from cellsynth_cli.pipeline import report as reporting
from cellsynth_cli.pipeline import rounds, stages, stamps
from cellsynth_cli.pipeline.recipe import RECIPE_FILE, STAGE_NAMES, Recipe

DATA = "data"  # the real images, an input of the stages that read them


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[stages.Context], dict]
    needs: tuple[str, ...]  # earlier stages (and DATA) whose outputs it reads
    sections: tuple[str, ...]  # the recipe sections its settings come from
    outputs: tuple[str, ...]  # project paths it writes
    resumable: bool = False  # continues inside after a kill (else starts again)


STAGES = (
    Stage("fit", stages.fit, (DATA,), ("fit",), (stages.FIT_PRESET, "fit.png")),
    Stage("train", stages.train, (DATA,), ("train",), (stages.DDPM_RUN,), resumable=True),
    Stage("simulate", stages.simulate, ("fit",), ("simulate",), (workdir.SIM,), resumable=True),
    Stage(
        "t_start",
        stages.t_start,
        (DATA, "train", "simulate"),
        ("t_start", "train"),  # the rule depends on whether the DDPM is conditional
        (stages.T_START,),
    ),
    Stage(
        "synthesize",
        stages.synthesize,
        ("train", "simulate", "t_start"),
        ("synthesize",),
        (workdir.SYNTH,),
        resumable=True,
    ),
    Stage("clean", stages.clean, ("synthesize",), ("clean",), (stages.CLEAN, stages.CLEAN_REPORT)),
    Stage("segment", stages.segment, (DATA, "clean"), ("segment",), (workdir.SEG,)),
    Stage(
        "predict",
        stages.predict,
        (DATA, "segment"),
        ("predict",),
        (workdir.PRED,),
        resumable=True,
    ),
    Stage(
        "rounds",
        rounds.self_train,
        (DATA, "train", "simulate", "t_start", "clean", "segment"),
        # with a generator a round also trains, synthesizes and cleans
        ("rounds", "train", "synthesize", "clean", "segment", "predict"),
        (rounds.ROUNDS, rounds.ROUNDS_REPORT),
        resumable=True,
    ),
)
assert tuple(s.name for s in STAGES) == recipes.SECTIONS  # a stage per recipe section

# what a stage reports while it runs: (stage, message, done, total)
Progress = Callable[[str, str, float | None, float | None], None]


def project_recipe(project: Path, given: Path | None, settings: dict, budget: str | None) -> dict:
    """The project's recipe overrides: PROJECT/pipeline.toml (or --recipe FILE instead), with
    --budget and --set on top. What the command line changes is kept in PROJECT/pipeline.toml,
    so a bare rerun repeats it."""
    path = Path(project) / RECIPE_FILE
    source = given if given is not None else path
    overrides = recipes.read_overrides(source) if source.exists() else {}
    if given is not None and not given.exists():
        raise InputError(f"--recipe {given}: no such file")
    if budget is not None:
        overrides["budget"] = budget
    # bad keys are reported before anything is written
    return recipes.typed(recipes.merge(overrides, settings), f"{source} and --set")


def save_recipe(project: Path, overrides: dict) -> Path:
    path = Path(project) / RECIPE_FILE
    return io.write_text(path, recipes.to_toml(overrides), overwrite=True)


def run_pipeline(
    project: Path,
    data: Path,
    recipe: Recipe,
    from_stage: str | None = None,
    score_against: Path | None = None,
    cluster: str | None = None,
    device: str = DEVICE,
    overwrite: bool = False,
    on_stage: Callable[[str, str], None] | None = None,
    on_progress: Progress | None = None,
) -> dict:
    """Run every stage not already done; returns each stage's result, status and seconds."""
    project, data = Path(project), Path(data)
    check_project(project, data, from_stage, overwrite)
    forced = set(STAGE_NAMES[STAGE_NAMES.index(from_stage) :]) if from_stage else set()
    ctx = stages.Context(project=project, data=data, recipe=recipe, cluster=cluster, device=device)
    stamp_of = {DATA: stamps.data_fingerprint(data)}
    summary: dict[str, dict] = {}
    for stage in STAGES:
        stamp = stamps.digest(
            {
                "stage": stage.name,
                "settings": _settings(recipe, stage),
                "inputs": {n: stamp_of[n] for n in stage.needs},
            }
        )
        stamp_of[stage.name] = stamp
        done = _up_to_date(project, stage.name, stamp, stage.outputs, stage.name in forced)
        if done:
            ctx.results[stage.name] = done["result"]
            summary[stage.name] = {"status": "up to date", **done}
            if on_stage:
                on_stage(stage.name, _kept_status(stage.name, done))
            continue
        summary[stage.name] = _run_stage(
            ctx, stage, stamp, stage.name in forced, on_stage, on_progress
        )
    summary["report"] = _report(ctx, stamp_of, score_against, "report" in forced, on_stage)
    return summary


def _report(
    ctx: stages.Context,
    stamp_of: dict[str, str],
    score_against: Path | None,
    forced: bool,
    on_stage: Callable[[str, str], None] | None,
) -> dict:
    """The report, stamped like a stage: a rerun with nothing changed neither redraws it nor
    scores the labelled set again (Cellpose predictions: minutes in 3D)."""
    labelled = stamps.data_fingerprint(score_against) if score_against is not None else None
    # the report names the stages another version made: it is redrawn when that changes
    made_by = {name: stamps.finished(ctx.project, name).get("version") for name in ctx.results}
    stamp = stamps.digest(
        {
            "stage": "report",
            "inputs": stamp_of,
            "score_against": labelled,
            "made_by": made_by,
            "version": __version__,
        }
    )
    done = _up_to_date(ctx.project, "report", stamp, reporting.OUTPUTS, forced)
    if done:
        if on_stage:
            on_stage("report", _kept_status("report", done))
        return {"status": "up to date", **done}
    if on_stage:
        on_stage("report", "running")
    start = time.perf_counter()
    result = reporting.report(ctx, score_against)
    record = {"stamp": stamp, "seconds": round(time.perf_counter() - start, 1), "result": result}
    record = stamps.mark_finished(ctx.project, "report", io.to_jsonable(record))
    return {"status": "ran", **record}


def _up_to_date(
    project: Path, name: str, stamp: str, outputs: tuple[str, ...], forced: bool
) -> dict | None:
    """NAME's finished record when its stamp matches, its outputs are there and it is not
    forced (make's rule), else None."""
    done = stamps.finished(project, name)
    outputs_there = all((project / output).exists() for output in outputs)
    if done and done["stamp"] == stamp and outputs_there and not forced:
        return done
    return None


def _kept_status(name: str, record: dict) -> str:
    """Up to date, and which version made the kept outputs when it is not this one."""
    made_by = stamps.made_by_another_version(record)
    return "up to date" if made_by is None else stamps.kept_from_another_version(name, made_by)


def _run_stage(
    ctx: stages.Context,
    stage: Stage,
    stamp: str,
    forced: bool,
    on_stage: Callable[[str, str], None] | None,
    on_progress: Progress | None,
) -> dict:
    """One stage: resume inside when the last attempt had this stamp, else start clean."""
    ctx.resume = stage.resumable and not forced and stamps.started(ctx.project, stage.name) == stamp
    if not ctx.resume:
        for output in stage.outputs:
            _remove(ctx.project / output)
    stamps.mark_started(ctx.project, stage.name, stamp)
    if on_stage:
        on_stage(stage.name, "resuming" if ctx.resume else "running")
    ctx.on_progress = lambda msg, done, total: (
        on_progress and on_progress(stage.name, msg, done, total)
    )
    start = time.perf_counter()
    result = stage.run(ctx)
    ctx.midpoint(stage.name)  # (a kill after the outputs, before the stamp)
    record = {
        "stamp": stamp,
        "settings": _settings(ctx.recipe, stage),
        "seconds": round(time.perf_counter() - start, 1),
        "resumed": ctx.resume,
        "result": result,
    }
    written = stamps.mark_finished(ctx.project, stage.name, io.to_jsonable(record))
    ctx.results[stage.name] = result
    return {"status": "resumed" if ctx.resume else "ran", **record, "version": written["version"]}


def _settings(recipe: Recipe, stage: Stage) -> dict:
    return {name: asdict(getattr(recipe, name)) for name in stage.sections}


def check_project(project: Path, data: Path, from_stage: str | None, overwrite: bool) -> None:
    """Bad input is one clear line before anything runs or is written. Outputs the pipeline
    did not make here (a user's own sim/, say) are never replaced without --overwrite."""
    if not Path(data).exists():
        raise InputError(
            f"{data}: no such directory; put your images in {Path(project) / workdir.REAL}/ "
            "or pass --data DIR"
        )
    io.list_volumes(data)
    if from_stage is not None and from_stage not in STAGE_NAMES:
        raise InputError(f"--from must be one of {', '.join(STAGE_NAMES)}, got {from_stage!r}")
    for stage in STAGES:
        if stamps.known(project, stage.name):
            continue
        for output in stage.outputs:
            if (project / output).exists() and not overwrite:
                raise InputError(
                    f"{project / output} exists and was not made by `cellsynth pipeline` here; "
                    "move it away or pass --overwrite"
                )


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
