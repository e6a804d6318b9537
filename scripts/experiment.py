"""`make experiment`: segment real nuclei with no human labels, against a real-label baseline.

On the bundled 2D image (data/dsb2018, 256 x 512): the left half is the training part, the
right half is held back for scoring only.
 1. train the DDPM on the training part's image (no labels): by default conditioned on
    pseudo-sketches (classical segmentation, no labels) and sampled with guidance 2, the
    best row of the issue-12 study (scripts/study.py); `make experiment` starts from the
    shipped DDPM this recipe made (EXPERIMENT_DDPM=bundled:dsb2018-nuclei-conditional);
 2. `cellsynth simulate fit` on the unlabelled training image (no real labels in the
    synthetic arm) writes a nuclei preset: radius, aspect ratio, count, brightness;
    simulate sketches from it, a quarter of the nuclei touching another (the study's best
    row; EXPERIMENT_TOUCHING);
 3. noise-analysis (from-labels sketches of the training part) picks t_start (or, with
    EXPERIMENT_T_RULE=qc, the simulated sketches' phantom/vanished count does);
 4. synthesize them and train Cellpose on the synthetic images + simulated masks only, plus
    nucleus-free squares of the unlabelled training image as images with no cells
    (`segment train --background`; EXPERIMENT_BACKGROUND, 4);
 5. baseline: Cellpose on the real labelled training part;
 6. score both on the held-back part; write experiment_out/report.md and a PNG;
 7. QC: the real-label model segments the synthetic images, matched to their own masks
    (phantom / vanished cells; a proxy for how faithful the synthesis is).
The DDPM trains a fixed number of steps (not a time limit: a busy machine would train fewer).
Budgets shrink with EXPERIMENT_FAST=1 (a smoke run of a few minutes). Environment knobs:
EXPERIMENT_OUT, EXPERIMENT_DDPM_STEPS, EXPERIMENT_N_SYNTHETIC, EXPERIMENT_EPOCHS,
EXPERIMENT_T_START (overrides the noise analysis), EXPERIMENT_DDPM=bundled:NAME (start from
that shipped DDPM, checked to be this recipe's; `make experiment` does), EXPERIMENT_REUSE_DDPM=1,
EXPERIMENT_REUSE_REAL=1 (keep the real-label Cellpose of an earlier run: it does not depend
on the synthetic side). Issue-12 variants: EXPERIMENT_SEED (DDPM and synthesis seed),
EXPERIMENT_CONDITION=pseudo-sketch (a sketch-conditioned DDPM), EXPERIMENT_GUIDANCE=w
(classifier-free guidance), EXPERIMENT_T_RULE=qc (t_start from `noise-analysis --qc` on the
simulated sketches instead of the KLD rule), EXPERIMENT_QC_FILTER=x (drop synthetic images
whose phantom or vanished share, judged by the classical segmenter, is above x, before
Cellpose trains), EXPERIMENT_N_SYNTHETIC with EXPERIMENT_IMAGES_PER_EPOCH (more synthetic
images at the same Cellpose step budget), EXPERIMENT_SEG_SEED (the synthetic arm's Cellpose
seed; the real arm keeps 0), EXPERIMENT_TOUCHING=p (simulate with touching_fraction p:
that share of the nuclei is placed against another one), EXPERIMENT_FIT_SPREAD=wide
(`simulate fit --spread wide`: 2-98 % ranges, rare small, large, dim and bright nuclei too),
EXPERIMENT_BACKGROUND=n (the synthetic arm's Cellpose also trains on up to n nucleus-free
squares of the unlabelled training image, as images with no cells: `segment train --background`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dsb_halves  # scripts/: the same halves as the demo and the bundled model
import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("EXPERIMENT_OUT", REPO / "experiment_out"))
CS = str(REPO / ".venv" / "bin" / "cellsynth")
FAST = os.environ.get("EXPERIMENT_FAST") == "1"
BUDGET = {
    "ddpm_steps": int(os.environ.get("EXPERIMENT_DDPM_STEPS", 300 if FAST else 6000)),
    "n_synthetic": int(os.environ.get("EXPERIMENT_N_SYNTHETIC", 4 if FAST else 16)),
    "seg_epochs": int(os.environ.get("EXPERIMENT_EPOCHS", 30 if FAST else 300)),
    "steps": 20 if FAST else 50,
}
VARIANT = {
    "seed": int(os.environ.get("EXPERIMENT_SEED", 0)),
    # the defaults are the issue-12 study's best row: a pseudo-sketch conditioned DDPM, w = 2,
    # a quarter of the nuclei touching, Cellpose shown 4 real background squares
    "condition": os.environ.get("EXPERIMENT_CONDITION", "pseudo-sketch"),
    "guidance": float(os.environ.get("EXPERIMENT_GUIDANCE", 2.0)),  # conditional models only
    "t_rule": os.environ.get("EXPERIMENT_T_RULE", "kld"),
    "qc_filter": float(os.environ.get("EXPERIMENT_QC_FILTER", 1.0)),
    # the synthetic arm's Cellpose seed: how much of a difference is Cellpose's own noise
    "seg_seed": int(os.environ.get("EXPERIMENT_SEG_SEED", 0)),
    # share of simulated nuclei placed against another (0: the fitted preset's placement)
    "touching": float(os.environ.get("EXPERIMENT_TOUCHING", 0.25)),
    # the fitted preset's ranges: the usual nucleus (central) or the rare ones too (wide)
    "fit_spread": os.environ.get("EXPERIMENT_FIT_SPREAD", "central"),
    # nucleus-free squares of the unlabelled training image as empty Cellpose images (0: none)
    "background": int(os.environ.get("EXPERIMENT_BACKGROUND", 4)),
}
# Both Cellpose arms draw the same number of images per epoch (with replacement: the real
# arm has one image), so they get the same number of optimizer steps and training crops.
IMAGES_PER_EPOCH = int(os.environ.get("EXPERIMENT_IMAGES_PER_EPOCH", 4 if FAST else 16))
timings: dict[str, float] = {}


def stage(name: str, *args: str) -> str:
    print(f"== {name}: cellsynth {' '.join(args)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([CS, *args], stdout=subprocess.PIPE, text=True)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"stage {name} failed with exit code {result.returncode}")
    return result.stdout


def split_data() -> tuple[Path, Path]:
    folders = dsb_halves.split(OUT)
    return folders["real_train"], folders["real_test"]


def train_ddpm(unlabelled: Path) -> None:
    stage(
        "1 train DDPM",
        "train",
        "--data",
        str(unlabelled),
        "-o",
        str(OUT / "ddpm"),
        "--patch",
        "128,128",
        "--batch",
        "8",
        "--steps",
        str(BUDGET["ddpm_steps"]),
        "--lr",
        "5e-4",
        "--checkpoint-every",
        "500",
        "--seed",
        str(VARIANT["seed"]),
        "--condition",
        VARIANT["condition"],
        "--overwrite",
    )


# QC-aware t_start: 4 simulated sketches synthesized from each t, cells counted
QC_ARGS = ["--qc", str(OUT / "sim"), "--max-volumes", "4"]


# EXPERIMENT_DDPM=bundled:NAME starts from a shipped DDPM instead of training one (`make
# experiment` does, with the model this recipe made: see bundled_ddpm); "train" trains.
DDPM_SOURCE = os.environ.get("EXPERIMENT_DDPM", "train")


@functools.cache  # resolved and checked once; main and the report ask again
def bundled_ddpm() -> Path | None:
    """The folder of the EXPERIMENT_DDPM bundled model, checked to be this recipe's DDPM (same
    data, condition, seed and steps), or None when the experiment trains its own."""
    if DDPM_SOURCE == "train":
        return None
    from cellsynth_cli import bundled

    folder = bundled.resolve(DDPM_SOURCE)
    made = json.loads((folder / "config.json").read_text())["train"]
    wanted = {"condition": VARIANT["condition"], "seed": VARIANT["seed"]}
    if "EXPERIMENT_DDPM_STEPS" in os.environ:  # else the model's own (FAST too)
        wanted["steps"] = BUDGET["ddpm_steps"]
    differs = {k: made.get(k, "none") for k, v in wanted.items() if made.get(k, "none") != v}
    if differs or "left half" not in made.get("data", ""):
        sys.exit(
            f"{DDPM_SOURCE} was not made by this recipe (it has {differs or made.get('data')}); "
            "set EXPERIMENT_DDPM=train to train the DDPM"
        )
    return folder


def reusable_ddpm() -> bool:
    """EXPERIMENT_REUSE_DDPM=1 and a finished model of this variant is there."""
    try:
        made = json.loads((OUT / "ddpm" / "config.json").read_text())["train"]
    except (OSError, KeyError, ValueError):
        return False
    return (
        os.environ.get("EXPERIMENT_REUSE_DDPM") == "1"
        and (OUT / "ddpm" / "checkpoint.pt").exists()
        and made.get("condition", "none") == VARIANT["condition"]
        and made.get("seed", 0) == VARIANT["seed"]
        and made.get("steps") == BUDGET["ddpm_steps"]
    )


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    train, test = split_data()
    unlabelled = OUT / "real_train_unlabelled"

    shipped = bundled_ddpm()
    if shipped is not None:
        print(
            f"== 1 train DDPM: starting from {DDPM_SOURCE}, this recipe's model (EXPERIMENT_DDPM)"
        )
    elif reusable_ddpm():
        print("== 1 train DDPM: reusing the existing model (EXPERIMENT_REUSE_DDPM=1)")
    else:
        train_ddpm(unlabelled)
    model = DDPM_SOURCE if shipped is not None else str(OUT / "ddpm")

    fitted = json.loads(
        stage(
            "2 simulate",
            "simulate",
            "fit",
            "--data",
            str(unlabelled),
            "-o",
            str(OUT / "fit.toml"),
            "--spread",
            VARIANT["fit_spread"],
            "--overwrite",
            "--json",
        )
    )
    stage(
        "2 simulate",
        "simulate",
        str(OUT / "fit.toml"),
        "-n",
        str(BUDGET["n_synthetic"]),
        "-o",
        str(OUT / "sim"),
        "--overwrite",
        *(["--set", f"touching_fraction={VARIANT['touching']}"] if VARIANT["touching"] else []),
    )

    stage(
        "3 noise analysis",
        "simulate",
        "from-labels",
        "--data",
        str(train),
        "-o",
        str(OUT / "fromlabels"),
        "--overwrite",
    )
    analysis = json.loads(
        stage(
            "3 noise analysis",
            "noise-analysis",
            "--images",
            str(train),
            "--sketches",
            str(OUT / "fromlabels"),
            "--model",
            model,
            "--steps",
            "10",
            "--crop",
            "128,128",
            "-o",
            str(OUT / "noise"),
            "--overwrite",
            "--json",
            *(QC_ARGS if VARIANT["t_rule"] == "qc" else []),
        )
    )
    t_start = analysis["recommended_t_start"] or 600
    if VARIANT["t_rule"] == "qc":
        t_start = analysis["qc_t_start"] or t_start
    t_start = int(os.environ.get("EXPERIMENT_T_START", 0)) or t_start

    stage(
        "4 synthesize",
        "synthesize",
        "--model",
        model,
        "--sketches",
        str(OUT / "sim"),
        "-o",
        str(OUT / "synth"),
        "--t-start",
        str(t_start),
        "--steps",
        str(BUDGET["steps"]),
        "--seed",
        str(VARIANT["seed"]),
        *(["--guidance", str(VARIANT["guidance"])] if VARIANT["condition"] != "none" else []),
        "--overwrite",
    )
    if VARIANT["qc_filter"] < 1.0:
        filter_synthetic(VARIANT["qc_filter"])
    # both arms: the same Cellpose recipe, steps and crops; only the training data differ
    for name, data, arm in (
        ("4 segment train (synthetic)", OUT / "synth", "synthetic"),
        ("5 segment train (real labels)", train, "real"),
    ):
        reuse = os.environ.get("EXPERIMENT_REUSE_REAL") == "1"
        if arm == "real" and reuse and (OUT / "seg_real" / "segmenter.json").exists():
            print("== 5 segment train (real labels): reusing it (EXPERIMENT_REUSE_REAL=1)")
            continue
        stage(
            name,
            "segment",
            "train",
            "--data",
            str(data),
            "-o",
            str(OUT / f"seg_{arm}"),
            "--epochs",
            str(BUDGET["seg_epochs"]),
            "--images-per-epoch",
            str(IMAGES_PER_EPOCH),
            "--bsize",
            "128",
            "--seed",
            str(VARIANT["seg_seed"] if arm == "synthetic" else 0),
            *(
                ["--background", str(unlabelled), "--background-crops", str(VARIANT["background"])]
                if arm == "synthetic" and VARIANT["background"]
                else []
            ),
            "--overwrite",
        )
    scores = {}
    for arm in ("synthetic", "real"):
        stage(
            "6 predict + score",
            "segment",
            "predict",
            "--model",
            str(OUT / f"seg_{arm}"),
            "--images",
            str(test),
            "-o",
            str(OUT / f"pred_{arm}"),
            "--overwrite",
        )
        scores[arm] = json.loads(
            stage(
                "6 predict + score",
                "segment",
                "score",
                "--pred",
                str(OUT / f"pred_{arm}"),
                "--ref",
                str(test),
                "--json",
            )
        )
    # how faithful are the synthetic images to their own masks? judged by the real-label model
    qc = json.loads(
        stage(
            "7 qc of the synthetic set",
            "segment",
            "qc",
            "--model",
            str(OUT / "seg_real"),
            "--data",
            str(OUT / "synth"),
            "--json",
        )
    )
    write_report(t_start, fitted, scores, analysis, qc)


def filter_synthetic(max_share: float) -> None:
    """Annotation-free cleaning: the classical segmenter judges each synthetic image against
    its own masks; images with more phantom or vanished cells than max_share move aside."""
    rejected = OUT / "synth_rejected"
    if rejected.exists():  # an earlier run's rejects: synthesize --overwrite remade the set
        shutil.rmtree(rejected)
    stage(
        "4 qc filter",
        "segment",
        "qc",
        "--judge",
        "classical",
        "--data",
        str(OUT / "synth"),
        "--max-phantom",
        str(max_share),
        "--max-vanished",
        str(max_share),
        "--move-failed",
        str(rejected),
        "-o",
        str(OUT / "qc_filter.json"),
        "--overwrite",
        "--json",
    )


def ddpm_summary() -> str:
    """Steps, seconds and last loss of the DDPM run, from its loss log (step,loss,lr,seconds)."""
    try:
        text = ((bundled_ddpm() or OUT / "ddpm") / "loss.csv").read_text()
    except OSError:
        return "no loss log"
    rows = [line.split(",") for line in text.split()[1:]]
    if not rows:
        return "empty loss log"
    loss = np.mean([float(r[1]) for r in rows[-100:]])
    return f"{rows[-1][0]} steps in {float(rows[-1][3]):.0f} s, last-100 mean loss {loss:.4f}"


def write_report(t_start: int, fitted: dict, scores: dict, analysis: dict, qc: dict) -> None:
    from cellsynth_cli import io
    from cellsynth_cli.preview import save_panels

    real = io.read_volume(OUT / "real_test" / "dsb.tif")
    synth = io.read_volume(io.list_volumes(OUT / "synth")[0])
    preds = {
        arm: io.read_volume(io.list_volumes(OUT / f"pred_{arm}")[0]).masks
        for arm in ("synthetic", "real")
    }
    save_panels(
        OUT / "report.png",
        [
            ("real (held back)", real.image, False),
            ("synthetic sample", synth.image, False),
            ("trained on synthetic", preds["synthetic"], True),
            ("trained on real labels", preds["real"], True),
            ("ground truth", real.masks, True),
        ],
    )
    rows = []
    for arm, label in (
        ("synthetic", "synthetic only (no human labels)"),
        ("real", "real labelled training part"),
    ):
        s = scores[arm]["summary"]
        rows.append(
            f"| {label} | {s['dice']['mean']:.3f} | {s['ap@0.5']['mean']:.3f} | "
            f"{s['ap@0.75']['mean']:.3f} | {s['f1']['mean']:.3f} |"
        )
    kept = len(qc["volumes"])
    filtered = (
        f"QC filter (classical judge, phantom and vanished <= {VARIANT['qc_filter']}): "
        f"{kept} of {BUDGET['n_synthetic']} synthetic images kept.\n"
        if VARIANT["qc_filter"] < 1.0
        else ""
    )
    phantom = float(np.mean([v["phantom"] for v in qc["volumes"]]))
    vanished = float(np.mean([v["vanished"] for v in qc["volumes"]]))
    ddpm_source = (
        f"the shipped {DDPM_SOURCE} (made by this recipe earlier)"
        if bundled_ddpm()
        else "trained here"
    )
    timing_rows = "\n".join(f"| {k} | {v:.0f} |" for k, v in timings.items())
    text = f"""# Annotation-free segmentation experiment

Data: data/dsb2018 (256 x 512); left half = training part, right half = held back.
Variant: {json.dumps(VARIANT)}.
DDPM: {ddpm_source}.
Budgets: DDPM {ddpm_summary()}, {BUDGET["n_synthetic"]} synthetic images,
{BUDGET["seg_epochs"]} Cellpose epochs of {IMAGES_PER_EPOCH} images for each arm (the real arm
draws its one image {IMAGES_PER_EPOCH} times): the same number of optimizer steps and
crops{" (FAST smoke run)" if FAST else ""}.

`simulate fit` on the unlabelled training image ({OUT / "fit.toml"}, picture fit.png):
{"; ".join(f"{k} {v}" for k, v in fitted["estimates"].items())}.
Noise analysis recommended t_start = {analysis["recommended_t_start"]} (KLD rule),
{analysis.get("qc_t_start")} (QC rule, with EXPERIMENT_T_RULE=qc); used {t_start}
(KLD {", ".join(f"{k:.3f}" for k in analysis["kld"])} at t = {analysis["timesteps"]}).

{filtered}
| Cellpose trained on | Dice | AP@0.5 | AP@0.75 | F1@0.5 |
|---|---|---|---|---|
{chr(10).join(rows)}

![real | synthetic | predictions | ground truth](report.png)

Quality control of the synthetic set (`segment qc`, the real-label model segments each
synthetic image and is matched to its simulated masks at IoU 0.5): phantom cells (found, not
simulated) {phantom:.1%}, vanished cells (simulated, not found) {vanished:.1%}, mean over
{len(qc["volumes"])} images. A proxy: it mixes synthesis faithfulness with that model's own
errors (F1 {scores["real"]["summary"]["f1"]["mean"]:.3f} on real held-back data).

| stage | seconds |
|---|---|
{timing_rows}
"""
    (OUT / "report.md").write_text(text)
    # the same numbers for scripts/study.py, which averages variants over seeds
    results = {
        "variant": VARIANT,
        "budget": BUDGET,
        "t_start": t_start,
        "ddpm": ddpm_summary(),
        "ddpm_source": DDPM_SOURCE,
        "scores": {arm: scores[arm]["summary"] for arm in scores},
        "qc": {"phantom": phantom, "vanished": vanished, "volumes": kept},
        "seconds": timings,
    }
    (OUT / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
