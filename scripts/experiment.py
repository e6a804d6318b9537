"""`make experiment` / `make experiment-3d`: the pipeline against a real-label baseline.

A bundled labelled image is cut in two: the left half plays the user's unlabelled images,
the right half is held back for scoring only.
 1. `cellsynth pipeline` (its library function, run_pipeline) on the left half's image
    alone: fit, DDPM, t_start, simulate, synthesize, clean, Cellpose on synthetic images +
    real background squares, predict; it also scores its segmenter on the held-back half;
 2. baseline: Cellpose with the recipe's [segment] settings (seed 0, no background squares)
    on the left half's real labels;
 3. QC: the real-label model segments the synthetic images, matched to their own masks
    (phantom / vanished cells: how faithful the synthesis is);
 4. with --real-rounds, the fair upper baseline: the real-label model's own self-training
    round 2 on the same unlabelled images (the pipeline's round 2 with the real labels in
    place of the synthetic set);
 5. OUT/report.md, report.png and results.json (which scripts/study.py tables), with the
    machine they were made on: a run repeats bit for bit only with the same CPU kernel set
    and thread count (docs/reproducibility.md), so compare rows made alike.

    python scripts/experiment.py                              # 2D, the recipe's defaults
    python scripts/experiment.py --set train.model=bundled:dsb2018-nuclei-conditional
    python scripts/experiment.py --dataset cells3d            # 3D (make experiment-3d)
    python scripts/experiment.py --budget smoke --out /tmp/x  # a plumbing check
    python scripts/experiment.py --reuse-real --real-rounds   # + the fair upper baseline

Every knob is a recipe key (`--set SECTION.KEY=VALUE`, `cellsynth pipeline --show-recipe`);
the defaults of both runs are the study's best row (`--paper-3d`: the first, unconditional 3D row).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import bench_data  # scripts/: the generalisation bench's data sets (issue 46)
import dsb_halves  # scripts/: the same halves as the demo and the bundled model
import numpy as np

from cellsynth_cli import io
from cellsynth_cli.pipeline import recipe as recipes
from cellsynth_cli.pipeline.run import run_pipeline
from cellsynth_cli.runtime.device import described, machine

REPO = Path(__file__).resolve().parent.parent
# each data set's recipe before --set: in 2D and 3D the recipe's defaults (the study's best
# row: pseudo-sketch conditioned DDPM, guidance 2, touching nuclei, real background squares,
# label-free t_start: the KLD rule in 3D; in 3D dpm++2m-sde at 20 steps); 3D keeps the step
# counts of the first 3D row (DDPM 1000 steps on 16 x 64 x 64 patches, 4 volumes, Cellpose
# 60 x 32 slices) so the rows compare.
# PAPER_3D is that first row (--paper-3d): the paper's unconditional DDPM, no touching
# nuclei, no background squares, the KLD t_start.
DATASETS = {
    "dsb2018": {},
    "cells3d": {
        "train": {"steps": 1000, "batch": 4, "patch": 64},
        "simulate": {"n": 4},
        "segment": {"epochs": 60, "images_per_epoch": 32},
    },
}
PAPER_3D = {
    "train": {"condition": "none"},
    "simulate": {"touching_fraction": 0.0},
    "segment": {"background_crops": 0},
}


def recipe_of(dataset: str, images: Path) -> dict:
    """DATASET's recipe changes: its own, or for a bench set those of its kind (2D or 3D)."""
    if dataset in DATASETS:
        return DATASETS[dataset]
    dims = io.read_volume(io.list_volumes(images)[0]).image.ndim
    return DATASETS["cells3d" if dims == 3 else "dsb2018"]


def split(dataset: str, out: Path) -> dict[str, Path]:
    """real_train (image + masks), real_train_unlabelled (image only), real_test."""
    if dataset == "dsb2018":
        return dsb_halves.split(out)
    return bench_data.build(dataset, out)  # the 3D stack's halves and the bench's sets


def real_arm(recipe: recipes.Recipe, train: Path, out: Path, reuse: bool) -> float:
    """The same Cellpose recipe on the real labels (the recipe's seed, no background squares)."""
    if reuse and (out / "segmenter.json").exists():
        print("== segment (real labels): reusing it (--reuse-real)", flush=True)
        return 0.0
    print("== segment (real labels)", flush=True)
    start = time.perf_counter()
    train_on_labels(recipe, train, out)
    return time.perf_counter() - start


def train_on_labels(
    recipe: recipes.Recipe, data: Path, out: Path, diameter: float | None = None
) -> None:
    """Cellpose with the recipe's [segment] budget and seed on labelled DATA (no background
    squares): what every real-label arm trains with, so their budgets cannot drift apart."""
    from cellsynth_cli.segment.train import train_segmenter

    section = recipe.segment
    train_segmenter(
        data,
        out,
        epochs=section.epochs,
        learning_rate=section.learning_rate,
        bsize=section.bsize,
        images_per_epoch=section.images_per_epoch,
        diameter=diameter,
        overwrite=True,
        seed=section.seed,
    )


def real_rounds_arm(recipe: recipes.Recipe, folders: dict[str, Path], out: Path) -> dict:
    """The fair upper baseline (issue 25): the real-label model (OUT/seg_real) pseudo-labels
    the unlabelled training part as the pipeline's round 2 does, and Cellpose trains from
    scratch, with the same budget and seed, on the real labelled part + crops of its confident
    cells. Returns how many crops and the held-back scores."""
    from cellsynth_cli.segment.model import segmenter_config
    from cellsynth_cli.segment.pseudo_labels import pseudo_label, write_training_crops

    print("== segment (real labels + self-training round 2)", flush=True)
    arm, model = out / "real_rounds", out / "seg_real"
    shutil.rmtree(arm / "train", ignore_errors=True)  # no crop of an earlier run stays in it
    pseudo_label(
        model,
        folders["real_train_unlabelled"],
        arm / "pseudo",
        recipe.rounds.settings(),
        mode=recipe.predict.mode,
        overwrite=True,
        min_size_fraction=recipe.predict.fraction(),
    )
    n_crops = write_training_crops(arm / "pseudo", arm / "train", recipe.rounds.tile_cells, True)
    for volume in io.read_volumes(folders["real_train"]):  # beside the crops, as zarr
        io.write_volume(arm / "train", volume, overwrite=True)
    diameter = float(segmenter_config(model)["diameter"])  # round 1's, as in the pipeline
    train_on_labels(recipe, arm / "train", arm / "seg", diameter)
    scores = scored(arm / "seg", folders["real_test"], arm / "pred", recipe.predict)
    return {**scores, "pseudo_crops": n_crops}


def scored(model: Path, test: Path, out: Path, section: recipes.PredictSection) -> dict:
    """The real-label arm predicts as the pipeline does (the recipe's [predict] settings)."""
    from cellsynth_cli.segment.predict import predict, score

    predict(
        model,
        test,
        out,
        overwrite=True,
        mode=section.mode,
        min_size_fraction=section.fraction(),
        match_brightness=section.match_brightness,
    )
    return score(out, test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset", choices=sorted(set(DATASETS) | set(bench_data.DATASETS)), default="dsb2018"
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--budget", default=None, help="smoke | quick | standard | full")
    parser.add_argument("--set", action="append", default=[], dest="settings")
    parser.add_argument("--reuse-real", action="store_true", help="keep OUT/seg_real")
    parser.add_argument(
        "--real-rounds",
        action="store_true",
        help="also the fair upper baseline: real labels + self-training round 2",
    )
    parser.add_argument(
        "--paper-3d", action="store_true", help="3D: the first 3D row (unconditional DDPM)"
    )
    args = parser.parse_args()
    out = args.out or REPO / (
        "experiment_out" if args.dataset == "dsb2018" else "experiment_3d_out"
    )
    folders = split(args.dataset, out)
    dataset = recipe_of(args.dataset, folders["real_train_unlabelled"])
    if args.paper_3d:
        dataset = recipes.merge(dataset, PAPER_3D)
    if args.budget:  # the budget scales the work: the data set's own step counts give way
        scaled = recipes.BUDGETS[args.budget] if args.budget in recipes.BUDGETS else {}
        dataset = {
            name: {k: v for k, v in keys.items() if k not in scaled.get(name, {})}
            for name, keys in dataset.items()
        }
        dataset["budget"] = args.budget
    overrides = recipes.merge(dataset, recipes.parse_settings(args.settings))
    recipe = recipes.resolve(recipes.typed(overrides, "--set"), "--set")
    if args.paper_3d and recipe.train.model:  # a model made elsewhere keeps its own condition
        parser.error("--paper-3d trains its own unconditional DDPM: drop --set train.model "
                     "(make experiment-3d EXPERIMENT_3D_DDPM=train)")  # fmt: skip
    project = out / "pipeline"
    summary = run_pipeline(
        project,
        folders["real_train_unlabelled"],
        recipe,
        score_against=folders["real_test"],
        on_stage=lambda name, status: print(f"== {name}: {status}", flush=True),
    )
    seconds = {name: row.get("seconds", 0.0) for name, row in summary.items()}
    seconds["segment (real labels)"] = real_arm(
        recipe, folders["real_train"], out / "seg_real", args.reuse_real
    )
    mode = recipe.predict.mode
    scores = {
        "synthetic": json.loads((project / "report.json").read_text())["scores"],
        "real": scored(out / "seg_real", folders["real_test"], out / "pred_real", recipe.predict),
    }
    if args.real_rounds:
        start = time.perf_counter()
        scores["real_rounds"] = real_rounds_arm(recipe, folders, out)
        seconds["real labels + round 2"] = time.perf_counter() - start
    qc = quality(out / "seg_real", project / "synth", mode)
    write_report(out, args.dataset, recipe, summary, scores, qc, seconds)


def quality(model: Path, synth: Path, mode: str) -> dict:
    """Phantom / vanished shares of the synthetic set, judged by the real-label model."""
    from cellsynth_cli.segment.qc import quality_control

    rows = quality_control(model, synth, mode=mode)["volumes"]
    return {k: float(np.mean([r[k] for r in rows])) for k in ("phantom", "vanished")}


def write_report(
    out: Path,
    dataset: str,
    recipe: recipes.Recipe,
    summary: dict,
    scores: dict,
    qc: dict,
    seconds: dict,
) -> None:
    from cellsynth_cli.io.preview import save_panels

    project = out / "pipeline"
    real = io.read_volume(io.list_volumes(out / "real_test")[0])
    synth = io.read_volume(io.list_volumes(project / "synth")[0])
    preds = {
        arm: io.read_volume(
            io.list_volumes(project / "pred-score" if arm == "synthetic" else out / "pred_real")[0]
        ).masks
        for arm in ("synthetic", "real")
    }
    save_panels(
        out / "report.png",
        [
            ("real (held back)", real.image, False),
            ("synthetic sample", synth.image, False),
            ("trained on synthetic", preds["synthetic"], True),
            ("trained on real labels", preds["real"], True),
            ("ground truth", real.masks, True),
        ],
    )
    metrics = ("dice", "ap@0.5", "ap@0.75", "f1")
    rows = [
        f"| {label} | "
        + " | ".join(f"{scores[arm]['summary'][m]['mean']:.3f}" for m in metrics)
        + " |"
        for arm, label in (
            ("synthetic", "no human labels (the kept round)"),
            ("real", "real labelled training part"),
            ("real_rounds", "real labels + self-training round 2 (the fair upper baseline)"),
        )
        if arm in scores
    ]
    rounds = summary["rounds"]["result"]
    for r in rounds["rounds"] if len(rounds["rounds"]) > 1 else []:
        means = scores["synthetic"]["rounds"][str(r["round"])]
        label = f"no human labels, round {r['round']}" + (
            " (kept)" if r["round"] == rounds["kept"] else ""
        )
        rows.append(f"| {label} | " + " | ".join(f"{means[m]['mean']:.3f}" for m in metrics) + " |")
    t_start = summary["t_start"]["result"]
    made_on = machine()
    text = f"""# Annotation-free segmentation experiment ({dataset})

Made by {described(made_on)}.

Left half: the unlabelled training part; right half: held back for scoring. The synthetic
arm is `cellsynth pipeline` with this recipe (budget {recipe.budget}); its settings are in
{project / ".cellsynth"} and `cellsynth pipeline {project} --show-recipe`.
t_start {t_start["t_start"]} (rule {t_start["rule"]}). Both arms: Cellpose {recipe.segment.epochs}
epochs of {recipe.segment.images_per_epoch} images (the same optimizer steps and crops).

| Cellpose trained on | Dice | AP@0.5 | AP@0.75 | F1@0.5 |
|---|---|---|---|---|
{chr(10).join(rows)}

![real | synthetic | predictions | ground truth](report.png)

QC of the synthetic set (the real-label model segments each synthetic image, matched to its
simulated masks at IoU 0.5): phantom {qc["phantom"]:.1%}, vanished {qc["vanished"]:.1%}.

| stage | seconds |
|---|---|
{chr(10).join(f"| {k} | {v:.0f} |" for k, v in seconds.items())}
"""
    (out / "report.md").write_text(text)
    results = {
        "dataset": dataset,
        "machine": made_on,
        "recipe": recipe.to_dict(),
        "t_start": t_start["t_start"],
        "ddpm": summary["train"].get("result"),
        "scores": {arm: scores[arm]["summary"] for arm in scores},
        "rounds": {
            **rounds,
            "scores": scores["synthetic"].get("rounds", {}),
        },
        "qc": qc,
        "seconds": seconds,
        **(
            {"real_rounds": {"pseudo_crops": scores["real_rounds"]["pseudo_crops"]}}
            if "real_rounds" in scores
            else {}
        ),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
