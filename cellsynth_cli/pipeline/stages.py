"""The pipeline's stages: each a plain function of the run context that writes its outputs.

Every stage calls the library function its CLI command calls; none reads a mask a person drew
(fit, pseudo-sketches, t_start, cleaning and background squares work from images alone).
Per-volume stages and DDPM training resume inside when the runner says so (`ctx.resume`).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellsynth_cli import io, workdir
from cellsynth_cli.defaults import DEVICE
from cellsynth_cli.errors import InputError
from cellsynth_cli.pipeline.recipe import Recipe

# Tests kill the pipeline inside a stage (kill -9) to check that a rerun ends where an
# uninterrupted run does: CELLSYNTH_PIPELINE_KILL=STAGE kills at that stage's midpoint,
# STAGE:TERM sends SIGTERM there instead (a batch scheduler's stop).
KILL_ENV = "CELLSYNTH_PIPELINE_KILL"

FIT_PRESET = "fit.toml"
DDPM_RUN = f"{workdir.RUNS}/ddpm"
T_START = "t_start.json"
CLEAN = "clean"
CLEAN_REPORT = "clean.json"


@dataclass
class Context:
    """What a stage needs: where things are, its recipe, how to report progress."""

    project: Path
    data: Path
    recipe: Recipe
    cluster: str | None = None
    device: str = DEVICE
    resume: bool = False  # an earlier attempt of this stage with the same stamp was cut short
    on_progress: Callable[[str, float | None, float | None], None] = lambda *a: None
    results: dict[str, dict] = field(default_factory=dict)  # what earlier stages returned

    def path(self, name: str) -> Path:
        return self.project / name

    def midpoint(self, stage: str) -> None:
        """A fault-injection point (see KILL_ENV): nothing happens unless a test asks."""
        asked = os.environ.get(KILL_ENV, "")
        if asked == stage:
            os.kill(os.getpid(), signal.SIGKILL)
        elif asked == f"{stage}:TERM":
            del os.environ[KILL_ENV]  # once: the stage's own clean-up passes here again
            os.kill(os.getpid(), signal.SIGTERM)


def fit(ctx: Context) -> dict:
    from cellsynth_cli.simulate.fit import fit_nuclei, save_fit_picture, to_toml

    found = fit_nuclei(
        ctx.data,
        spread=ctx.recipe.fit.spread,
        radius=ctx.recipe.fit.radius or None,
        on_volume=lambda name: ctx.on_progress(f"found nuclei in {name}", None, None),
    )
    io.write_text(ctx.path(FIT_PRESET), to_toml(found, ctx.data), overwrite=True)
    ctx.midpoint("fit")
    save_fit_picture(ctx.path("fit.png"), found, ctx.data)
    return {"estimates": found.estimates, "warnings": found.warnings}


def train(ctx: Context) -> dict:
    from cellsynth_cli.ddpm.config import TrainConfig
    from cellsynth_cli.ddpm.train import load_training_images
    from cellsynth_cli.ddpm.train import train as train_ddpm

    section = ctx.recipe.train
    run = ctx.path(DDPM_RUN)
    if section.model:
        return _use_model(section.model, run)
    found = load_training_images(ctx.data, None)
    config = TrainConfig(
        data=str(ctx.data),
        dims=found.dims,
        patch=training_patch(found, section.patch, section.channels),
        steps=section.steps,
        batch=section.batch,
        lr=section.lr,
        seed=section.seed,
        device=ctx.device,
        checkpoint_every=section.checkpoint_every,
        condition=section.condition,
        condition_dropout=section.condition_dropout,
        channels=tuple(section.channels) or None,
    )
    resume = ctx.resume and (run / "checkpoint.pt").exists()

    def on_checkpoint(step: int) -> None:
        if step < section.steps:
            ctx.midpoint("train")

    result = train_ddpm(
        config,
        run,
        resume=resume,
        overwrite=True,
        on_step=lambda step, loss: ctx.on_progress(f"loss {loss:.4f}", step, section.steps),
        on_checkpoint=on_checkpoint,
    )
    workdir.point_latest(run)  # `cellsynth synthesize` with no --model finds it
    return {"step": result.step, "final_loss": result.final_loss, "resumed": resume}


def _use_model(model: str, run: Path) -> dict:
    """runs/ddpm -> a DDPM made elsewhere (a run directory or bundled:NAME)."""
    from cellsynth_cli.ddpm import bundled

    folder = bundled.resolve(model) if bundled.is_bundled(model) else Path(model).resolve()
    if not (folder / "checkpoint.pt").is_file():
        raise InputError(f"recipe [train] model {model}: no checkpoint.pt there")
    run.parent.mkdir(parents=True, exist_ok=True)
    run.symlink_to(folder, target_is_directory=True)
    workdir.point_latest(run)
    return {"model": model, "conditional": conditional_model(run)}


def conditional_model(run: Path) -> bool:
    """Whether the DDPM in RUN follows a sketch at every step (its config.json says)."""
    made = json.loads((run / "config.json").read_text())["train"]
    return made.get("condition", "none") != "none"


def auto_t_start_rule(run: Path) -> str:
    """The `auto` rule for the DDPM in RUN: T for a 2D conditional model, else kld.

    Measured (docs/experiments.md): in 2D a conditional model started at T scored as well as
    the KLD rule; in 3D (the 3D experiment's 1000-step conditional DDPM) T made flat,
    untextured nuclei and Cellpose split the real ones (AP@0.5 0.125 against 0.519 with kld).
    """
    dims = json.loads((run / "config.json").read_text())["dims"]
    return "T" if conditional_model(run) and dims == 2 else "kld"


def training_patch(found: Any, side: int, channels: list[int]) -> tuple[int, ...]:
    """The recipe's patch (side in-plane, up to 16 z slices) shrunk to fit the smallest
    image, each size a multiple of the UNet's down-sampling."""
    from cellsynth_cli.diffusion.unet import UNetConfig, anisotropic_factors, default_config

    voxel = found.voxel_size if found.dims == 3 else None
    config = default_config(found.dims, voxel)
    if channels:
        factors = anisotropic_factors(len(channels), voxel)
        config = UNetConfig.from_dict(
            {**config.to_dict(), "channels": list(channels), "down_factors": factors}
        )
    return fitted_patch(found, side, config.multiples)


def fitted_patch(found: Any, side: int, multiples: tuple[int, ...]) -> tuple[int, ...]:
    """A patch of SIDE in-plane (up to 16 z slices) shrunk to fit the smallest image of
    FOUND, each size a multiple of the network's down-sampling MULTIPLES."""
    wanted = (16, side, side) if found.dims == 3 else (side, side)
    smallest = [min(im.shape[a] for im in found.images) for a in range(found.dims)]
    patch = []
    for want, size, multiple in zip(wanted, smallest, multiples, strict=True):
        fitted = min(want, size) // multiple * multiple
        if fitted < multiple:
            raise InputError(
                f"{found.dims}D images of size {tuple(smallest)} are smaller than the DDPM's "
                f"smallest patch ({multiple} along an axis of size {size})"
            )
        patch.append(fitted)
    return tuple(patch)


def simulate(ctx: Context) -> dict:
    from cellsynth_cli.simulate.config import load_preset, replace
    from cellsynth_cli.simulate.dataset import simulate_dataset

    section = ctx.recipe.simulate
    config = load_preset(str(ctx.path(FIT_PRESET)))
    config = replace(
        config, {"touching_fraction": section.touching_fraction}, source="recipe [simulate]"
    )
    done: list[str] = []

    def on_volume(name: str) -> None:
        done.append(name)
        ctx.on_progress(name, len(done), section.n)
        if len(done) == 1 and section.n > 1:
            ctx.midpoint("simulate")

    results = simulate_dataset(
        config,
        section.n,
        ctx.path(workdir.SIM),
        seed=section.seed,
        overwrite=not ctx.resume,
        resume=ctx.resume,
        cluster=ctx.cluster,
        on_volume=on_volume,
    )
    return {"volumes": len(results), "cells": sum(r.get("n_cells", 0) for r in results)}


def t_start(ctx: Context) -> dict:
    """t_start without labels: see TStartSection."""
    from cellsynth_cli.ddpm.noise_analysis import noise_analysis

    section = ctx.recipe.t_start
    rule = section.rule
    if rule == "auto":
        rule = auto_t_start_rule(ctx.path(DDPM_RUN))
    if rule == "fixed":
        chosen, analysis = section.value, None
    elif rule == "T":
        chosen, analysis = 1000, None
    elif rule == "kld":
        result = noise_analysis(
            ctx.data,
            ctx.path(workdir.SIM),
            kld_threshold=section.kld_threshold,
            model_run=ctx.path(DDPM_RUN),
            max_volumes=section.sketches,
            device=ctx.device,
            on_progress=lambda msg: ctx.on_progress(msg, None, None),
        )
        analysis = result.to_dict()
        chosen = result.recommended_t_start or section.value
    else:
        raise InputError(f"recipe [t_start] rule must be auto, kld, T or fixed, got {rule!r}")
    summary = {"t_start": int(chosen), "rule": rule, "analysis": analysis}
    io.write_text(ctx.path(T_START), json.dumps(summary, indent=2) + "\n", overwrite=True)
    return {"t_start": int(chosen), "rule": rule}


def synthesize(ctx: Context) -> dict:
    return synthesize_with(ctx, ctx.path(DDPM_RUN), ctx.path(workdir.SYNTH), "synthesize")


def synthesize_with(ctx: Context, model: Path, out: Path, stage: str) -> dict:
    """The simulated sketches synthesized by MODEL into OUT with the recipe's settings (also
    a self-training round's generator); STAGE names the fault-injection point."""
    from cellsynth_cli.ddpm.synthesize import SynthesisOptions, synthesize_dataset

    section = ctx.recipe.synthesize
    chosen = json.loads(ctx.path(T_START).read_text())["t_start"]
    conditional = conditional_model(model)
    options = SynthesisOptions(
        t_start=chosen,
        steps=section.steps,
        sampler=section.sampler,
        seed=section.seed,
        device=ctx.device,
        guidance=section.guidance if conditional else None,
        guidance_share=section.guidance_share,
    )
    done: list[str] = []

    def on_volume(name: str, n_steps: int, plan: dict) -> None:
        if done:
            ctx.midpoint(stage)  # one volume is written
        done.append(name)
        ctx.on_progress(f"{name} ({n_steps} steps)", len(done) - 1, ctx.recipe.simulate.n)

    results = synthesize_dataset(
        model,
        ctx.path(workdir.SIM),
        out,
        options,
        resume=ctx.resume,
        overwrite=not ctx.resume,
        on_volume=on_volume,
        cluster=ctx.cluster,
    )
    return {"volumes": len(results), "t_start": chosen}


def clean(ctx: Context) -> dict:
    return clean_into(ctx, ctx.path(workdir.SYNTH), ctx.path(CLEAN), ctx.path(CLEAN_REPORT))


def clean_into(ctx: Context, synth: Path, folder: Path, report_path: Path) -> dict:
    """The classical judge (no model, no labels) checks each synthetic image of SYNTH against
    its own masks; FOLDER links the images that pass, and Cellpose trains on those."""
    from cellsynth_cli.segment.qc import quality_control

    section = ctx.recipe.clean
    report = quality_control(
        None,
        synth,
        max_phantom=section.max_phantom,
        max_vanished=section.max_vanished,
        judge="classical",
        cluster=ctx.cluster,
        on_volume=lambda name: ctx.on_progress(name, None, None),
    )
    if not report["passed"]:
        raise InputError(
            f"clean: every synthetic image loses more cells than the recipe allows "
            f"(max_phantom {section.max_phantom}, max_vanished {section.max_vanished})"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for row in report["volumes"]:
        if row["passed"]:
            link = folder / Path(row["path"]).name
            link.symlink_to(os.path.relpath(row["path"], folder), target_is_directory=True)
    io.write_text(report_path, json.dumps(report, indent=2) + "\n", overwrite=True)
    shares = {k: _mean(r[k] for r in report["volumes"]) for k in ("phantom", "vanished")}
    return {"kept": len(report["passed"]), "of": len(report["volumes"]), **shares}


def segment(ctx: Context) -> dict:
    result, note = train_cellpose(ctx, ctx.path(CLEAN), ctx.path(workdir.SEG))
    ctx.midpoint("segment")
    return {"diameter": result.get("diameter"), "note": note}


def train_cellpose(
    ctx: Context, data: Path, out: Path, diameter: float | None = None
) -> tuple[dict, str | None]:
    """Cellpose from scratch on DATA into OUT with the recipe's budget, plus nucleus-free
    squares of the real images (without them when the images are too dense for one)."""
    from cellsynth_cli.segment.train import train_segmenter

    section = ctx.recipe.segment

    def run(background: Path | None) -> dict:
        return train_segmenter(
            data,
            out,
            epochs=section.epochs,
            learning_rate=section.learning_rate,
            bsize=section.bsize,
            images_per_epoch=section.images_per_epoch,
            diameter=diameter,
            overwrite=True,
            seed=section.seed,
            device=ctx.device,
            on_epoch=lambda epoch, loss: ctx.on_progress(f"loss {loss:.4f}", epoch, section.epochs),
            background=background,
            n_background_crops=max(section.background_crops, 1),
            brightness_jitter=section.brightness_jitter,
        )

    if section.background_crops <= 0:
        return run(None), None
    try:
        return run(ctx.data), None
    except InputError as exc:  # images too dense for a nucleus-free square
        return run(None), f"trained without background squares: {exc}"


def predict(ctx: Context) -> dict:
    from cellsynth_cli.segment.predict import predict as predict_masks

    done: list[str] = []

    def on_volume(name: str) -> None:
        done.append(name)
        ctx.on_progress(name, len(done), None)
        if len(done) == 1:
            ctx.midpoint("predict")

    results = predict_masks(
        ctx.path(workdir.SEG),
        ctx.data,
        ctx.path(workdir.PRED),
        overwrite=not ctx.resume,
        resume=ctx.resume,
        mode=ctx.recipe.predict.mode,
        min_size_fraction=ctx.recipe.predict.fraction(),
        match_brightness=ctx.recipe.predict.match_brightness,
        on_volume=on_volume,
        device=ctx.device,
        cluster=ctx.cluster,
    )
    return {"volumes": len(results)}


def _mean(values: Any) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0
