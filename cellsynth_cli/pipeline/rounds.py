"""The self-training stage: the user's unlabelled images teach the segmenter (rounds 2..N).

Round 1 is the segmenter trained on synthetic images (seg/, pred/). Round k pseudo-labels the
real images with round k-1's segmenter (segment/pseudo_labels.py: the cells it finds again
in the mirrored image), cuts crops around such cells (the other cells in them ignored: their
pixels train nothing), trains Cellpose from scratch on the synthetic images plus those crops
(the same step budget as round 1) and segments the real images again. Everything of round k
lives in rounds/rK/.

With [rounds] generator_steps > 0 round k also has its own generator: the first DDPM
fine-tuned on (real image, label-sketch of round k-1's masks of it) pairs (train --init,
--condition label-sketch), which synthesizes the simulated sketches again (rK/synth, judged
into rK/clean like the first set); round k's Cellpose trains on those instead.

Guard against drift, without labels: a round's segmenter is judged by how many cells of the
real images it finds again in the mirrored images (its confident cells) and how many it
finds at all. A round is kept only when it finds more confident cells than the round before
and no fewer cells (a tie keeps the earlier round: in the first 2D measurement round 2 tied,
30 and 30, and scored lower on held-back labels; a round-2 generator found 30 cells, all
confident, against 31 and 29, and missed 10 held-back nuclei against 2), and no round after
one that is not kept; rounds.json says which round is kept and where its segmenter and masks
are.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cellsynth_cli import io, workdir
from cellsynth_cli.errors import InputError
from cellsynth_cli.pipeline.stages import (
    CLEAN,
    DDPM_RUN,
    Context,
    clean_into,
    conditional_model,
    fitted_patch,
    synthesize_with,
    train_cellpose,
)

ROUNDS = "rounds"
ROUNDS_REPORT = "rounds.json"
ROUND_DONE = "round.json"


def self_train(ctx: Context) -> dict:
    section = ctx.recipe.rounds
    ctx.path(ROUNDS).mkdir(exist_ok=True)  # an output even with one round: the stage is done
    rounds = [{"round": 1, "seg": workdir.SEG, "pred": workdir.PRED}]
    diameter = _diameter(ctx.path(workdir.SEG))
    for k in range(2, section.n + 1):
        rounds[-1].update(_confidence(ctx, rounds[-1]["seg"], f"{ROUNDS}/r{k}/pseudo"))
        rounds.append(_round(ctx, k, diameter, rounds[-1]["pred"]))
    if section.n > 1:  # the last round's own confidence, for the guard
        rounds[-1].update(_confidence(ctx, rounds[-1]["seg"], f"{ROUNDS}/check"))
    kept = kept_round(rounds)
    # the kept round's seg and pred at the top: what the report and the CLI point the user to
    summary = {"kept": kept, **rounds[kept - 1], "rounds": rounds}
    io.write_text(ctx.path(ROUNDS_REPORT), json.dumps(summary, indent=2) + "\n", overwrite=True)
    return summary


def kept_round(rounds: list[dict]) -> int:
    """The last round before the first one without more confident cells than its predecessor
    or with fewer cells: a segmenter that stops finding some cells can be sure of all the
    others."""
    kept = 1
    for before, after in zip(rounds, rounds[1:], strict=False):
        if after.get("n_confident", 0) <= before.get("n_confident", 0):
            break
        if after.get("n_cells", 0) < before.get("n_cells", 0):
            break
        kept = after["round"]
    return kept


def _round(ctx: Context, k: int, diameter: float, masks: str) -> dict:
    """Round K: train on synthetic + crops of round k-1's pseudo-labels, segment the real
    images; with a generator, on its own synthetic set (MASKS: round k-1's masks of the real
    images). A round finished by an earlier attempt is read back, not trained again."""
    from cellsynth_cli.segment.predict import predict

    folder = f"{ROUNDS}/r{k}"
    done = ctx.path(folder) / ROUND_DONE
    if ctx.resume and done.is_file():
        return json.loads(done.read_text())
    generator = {}
    synthetic = ctx.path(CLEAN)
    if ctx.recipe.rounds.generator_steps:
        generator = _generator(ctx, k, masks)
        synthetic = ctx.path(f"{folder}/clean")
    ctx.on_progress(f"round {k}: training set", None, None)
    n_crops = _training_set(
        ctx.path(folder),
        synthetic,
        ctx.path(f"{folder}/pseudo"),
        ctx.recipe.rounds.tile_cells,
    )
    result, note = train_cellpose(
        ctx, ctx.path(f"{folder}/train"), ctx.path(f"{folder}/seg"), diameter
    )
    predict(
        ctx.path(f"{folder}/seg"),
        ctx.data,
        ctx.path(f"{folder}/pred"),
        overwrite=True,
        mode=ctx.recipe.predict.mode,
        min_size_fraction=ctx.recipe.predict.fraction(),
        match_brightness=ctx.recipe.predict.match_brightness,
        device=ctx.device,
        cluster=ctx.cluster,
    )
    record = {
        "round": k,
        "seg": f"{folder}/seg",
        "pred": f"{folder}/pred",
        "pseudo_crops": n_crops,
        "note": note,
        **({"generator": generator} if generator else {}),
    }
    io.write_text(done, json.dumps(record, indent=2) + "\n", overwrite=True)
    ctx.midpoint("rounds")
    return record


def _generator(ctx: Context, k: int, masks: str) -> dict:
    """Round K's DDPM, the first one fine-tuned on label-sketches of MASKS (a folder of real
    images with masks), and its synthetic set, judged like the first one."""
    from cellsynth_cli.ddpm.config import TrainConfig
    from cellsynth_cli.ddpm.train import load_training_images
    from cellsynth_cli.ddpm.train import train as train_ddpm
    from cellsynth_cli.diffusion.unet import UNetConfig

    folder, first = ctx.path(f"{ROUNDS}/r{k}"), ctx.path(DDPM_RUN)
    if not conditional_model(first):
        raise InputError(
            "[rounds] generator_steps fine-tunes a sketch-conditioned DDPM; "
            f"{first} follows no sketch"
        )
    made = json.loads((first / "config.json").read_text())
    unet = made["unet"]  # the network the generator keeps: its down-sampling sets the patch
    pairs = _images_with_cells(ctx.path(masks), folder / "pairs")
    found = load_training_images(pairs, None)
    steps, run = ctx.recipe.rounds.generator_steps, folder / "ddpm"
    config = TrainConfig(
        data=str(pairs),
        dims=found.dims,
        patch=fitted_patch(found, made["train"]["patch"][-1], UNetConfig.from_dict(unet).multiples),
        steps=steps,
        batch=ctx.recipe.train.batch,
        lr=ctx.recipe.train.lr,
        seed=ctx.recipe.train.seed,
        device=ctx.device,
        checkpoint_every=ctx.recipe.train.checkpoint_every,
        condition="label-sketch",
        condition_dropout=made["train"].get("condition_dropout", TrainConfig.condition_dropout),
        channels=None,
        init=str(first.resolve()),
    )
    ctx.on_progress(f"round {k}: generator", 0, steps)
    trained = train_ddpm(
        config,
        run,
        resume=ctx.resume and (run / "checkpoint.pt").exists(),
        overwrite=True,
        on_step=lambda step, loss: ctx.on_progress(
            f"round {k} generator, loss {loss:.4f}", step, steps
        ),
    )
    synthesize_with(ctx, run, folder / "synth", "rounds")
    shutil.rmtree(folder / "clean", ignore_errors=True)
    judged = clean_into(ctx, folder / "synth", folder / "clean", folder / "clean.json")
    return {"steps": trained.step, "final_loss": trained.final_loss, "clean": judged}


def _images_with_cells(masks: Path, out: Path) -> Path:
    """OUT: links to the volumes of MASKS in which the segmenter found cells (a label-sketch
    of an image without any would call all its nuclei background)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for path in io.list_volumes(masks):
        found = io.read_volume(path).masks
        if found is not None and found.any():
            _link(path, out)
    if not any(out.iterdir()):
        raise InputError(f"{masks}: the segmenter found no cell; no pairs for the generator")
    return out


def _confidence(ctx: Context, seg: str, out: str) -> dict:
    """Pseudo-label the real images with SEG into OUT: its confident cells."""
    from cellsynth_cli.segment.pseudo_labels import pseudo_label

    section = ctx.recipe.rounds
    rows = pseudo_label(
        ctx.path(seg),
        ctx.data,
        ctx.path(out),
        section.settings(),
        mode=ctx.recipe.predict.mode,
        resume=ctx.resume,
        overwrite=not ctx.resume,
        device=ctx.device,
        cluster=ctx.cluster,
        on_volume=lambda name: ctx.on_progress(f"pseudo-labels of {name}", None, None),
        min_size_fraction=ctx.recipe.predict.fraction(),
    )
    cells = sum(r["n_cells"] for r in rows)
    confident = sum(r["n_confident"] for r in rows)
    return {
        "n_cells": cells,
        "n_confident": confident,
        "confident_share": confident / max(cells, 1),
    }


def _training_set(folder: Path, synthetic: Path, pseudo: Path, tile_cells: float) -> int:
    """FOLDER/train: links to the synthetic images and the pseudo-labelled crops (written to
    FOLDER/crops); returns how many crops there are."""
    from cellsynth_cli.segment.pseudo_labels import write_training_crops

    train, crops = folder / "train", folder / "crops"
    for path in (train, crops):
        shutil.rmtree(path, ignore_errors=True)
    n = write_training_crops(pseudo, crops, tile_cells, overwrite=True)
    train.mkdir(parents=True)
    for volume in io.list_volumes(synthetic) + (io.list_volumes(crops) if n else []):
        _link(volume, train)
    return n


def _link(path: Path, folder: Path) -> None:
    target = path.resolve()
    (folder / path.name).symlink_to(os.path.relpath(target, folder), target_is_directory=True)


def _diameter(seg: Path) -> float:
    from cellsynth_cli.segment.model import segmenter_config

    return float(segmenter_config(seg)["diameter"])
