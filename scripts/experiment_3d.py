"""`make experiment-3d`: annotation-free 3D nuclei segmentation on the bundled stack.

data/cells3d (60 x 256 x 256, voxel 0.29 x 0.26 x 0.26 um, 20 nuclei, approximate labels that
were not curated): the left half (x < 128) is the training part, the right half is held back
for scoring only.
 1. train a 3D DDPM on the training part's image (no labels), a fixed number of steps;
 2. noise analysis (forward, from-labels sketches of the training part) picks t_start;
 3. `cellsynth simulate fit` on the unlabelled training image -> a 3D nuclei preset;
    simulate sketches from it;
 4. synthesize them; train Cellpose on the synthetic images + simulated masks only
    (3D volumes: xy slices plus xz/yz slices resampled to isotropic voxels);
 5. baseline: the same Cellpose recipe on the real labelled training part;
 6. both segment the held-back part in Cellpose's 3D mode; Dice, AP@0.5, AP@0.75, F1;
 7. report.md with stage timings and report.png (slices: real | synthetic | predictions |
    labels).
Environment knobs: EXPERIMENT3D_OUT, EXPERIMENT3D_DDPM_STEPS, EXPERIMENT3D_N_SYNTHETIC,
EXPERIMENT3D_EPOCHS, EXPERIMENT3D_T_START, EXPERIMENT3D_REUSE_DDPM=1, EXPERIMENT3D_FAST=1
(a smoke run of the plumbing: too little training to segment anything).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("EXPERIMENT3D_OUT", REPO / "experiment_3d_out"))
CS = str(REPO / ".venv" / "bin" / "cellsynth")
FAST = os.environ.get("EXPERIMENT3D_FAST") == "1"
BUDGET = {
    "ddpm_steps": int(os.environ.get("EXPERIMENT3D_DDPM_STEPS", 40 if FAST else 1000)),
    "n_synthetic": int(os.environ.get("EXPERIMENT3D_N_SYNTHETIC", 2 if FAST else 4)),
    "seg_epochs": int(os.environ.get("EXPERIMENT3D_EPOCHS", 4 if FAST else 60)),
    "synthesis_steps": 10 if FAST else 50,
}
PATCH = "16,64,64"  # 3D DDPM training patch (z, y, x)
IMAGES_PER_EPOCH = 32  # 2D training slices per Cellpose epoch, the same for both arms
timings: dict[str, float] = {}


def stage(name: str, *args: str) -> str:
    print(f"== {name}: cellsynth {' '.join(args)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([CS, *args], stdout=subprocess.PIPE, text=True)
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"stage {name} failed with exit code {result.returncode}")
    return result.stdout


def split_data() -> tuple[Path, Path, Path]:
    """Left half (x < 128) for training, right half held back; TIFF with the voxel size."""
    from cellsynth_cli import io
    from cellsynth_cli.export import write_tiff_volume

    volume = io.read_volume(REPO / "data" / "cells3d" / "cells3d.tif")
    half = volume.image.shape[-1] // 2
    parts = {
        "real_train": (np.s_[..., :half], True),
        "real_test": (np.s_[..., half:], True),
        "real_train_unlabelled": (np.s_[..., :half], False),
    }
    for folder, (sl, labelled) in parts.items():
        part = io.Volume(
            name="cells3d",
            image=volume.image[sl],
            masks=volume.masks[sl] if labelled else None,
            voxel_size=volume.voxel_size,
        )
        write_tiff_volume(OUT / folder, part, overwrite=True)
    return OUT / "real_train", OUT / "real_test", OUT / "real_train_unlabelled"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    train, test, unlabelled = split_data()
    reuse = os.environ.get("EXPERIMENT3D_REUSE_DDPM") == "1"
    if reuse and (OUT / "ddpm" / "checkpoint.pt").exists():
        print("== 1 train DDPM: reusing the existing model (EXPERIMENT3D_REUSE_DDPM=1)")
    else:
        stage(
            "1 train 3D DDPM",
            "train",
            "--data",
            str(unlabelled),
            "-o",
            str(OUT / "ddpm"),
            "--patch",
            PATCH,
            "--batch",
            "4",
            "--steps",
            str(BUDGET["ddpm_steps"]),
            "--lr",
            "5e-4",
            "--checkpoint-every",
            "200",
            "--overwrite",
        )
    stage(
        "2 noise analysis",
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
            "2 noise analysis",
            "noise-analysis",
            "--images",
            str(train),
            "--sketches",
            str(OUT / "fromlabels"),
            "-o",
            str(OUT / "noise"),
            "--overwrite",
            "--json",
        )
    )
    t_start = (
        int(os.environ.get("EXPERIMENT3D_T_START", 0)) or analysis["recommended_t_start"] or 600
    )
    fitted = json.loads(
        stage(
            "3 simulate",
            "simulate",
            "fit",
            "--data",
            str(unlabelled),
            "-o",
            str(OUT / "fit.toml"),
            "--overwrite",
            "--json",
        )
    )
    stage(
        "3 simulate",
        "simulate",
        str(OUT / "fit.toml"),
        "-n",
        str(BUDGET["n_synthetic"]),
        "-o",
        str(OUT / "sim"),
        "--overwrite",
    )
    stage(
        "4 synthesize",
        "synthesize",
        "--model",
        str(OUT / "ddpm"),
        "--sketches",
        str(OUT / "sim"),
        "-o",
        str(OUT / "synth"),
        "--t-start",
        str(t_start),
        "--steps",
        str(BUDGET["synthesis_steps"]),
        "--overwrite",
    )
    for name, data, arm in (
        ("4 segment train (synthetic)", OUT / "synth", "synthetic"),
        ("5 segment train (real labels)", train, "real"),
    ):
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
            "--overwrite",
        )
    scores = {}
    for arm in ("synthetic", "real"):
        stage(
            "6 predict (3D) + score",
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
                "6 predict (3D) + score",
                "segment",
                "score",
                "--pred",
                str(OUT / f"pred_{arm}"),
                "--ref",
                str(test),
                "--json",
            )
        )
    realism = json.loads(
        stage(
            "7 realism of the synthetic set",
            "evaluate",
            "--pred",
            str(OUT / "synth"),
            "--ref",
            str(train),
            "--unpaired",
            "--json",
        )
    )
    write_report(t_start, fitted, scores, analysis, realism)


def ddpm_summary() -> str:
    try:
        rows = [line.split(",") for line in (OUT / "ddpm" / "loss.csv").read_text().split()[1:]]
    except OSError:
        return "no loss log"
    if not rows:
        return "empty loss log"
    loss = np.mean([float(r[1]) for r in rows[-100:]])
    return f"{rows[-1][0]} steps in {float(rows[-1][3]):.0f} s, last-100 mean loss {loss:.4f}"


def _cell(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_report(t_start: int, fitted: dict, scores: dict, analysis: dict, realism: dict) -> None:
    from cellsynth_cli import io
    from cellsynth_cli.preview import save_panels

    real = io.read_volume(OUT / "real_test" / "cells3d.tif")
    synth = io.read_volume(io.list_volumes(OUT / "synth")[0])
    preds = {
        arm: io.read_volume(io.list_volumes(OUT / f"pred_{arm}")[0]).masks
        for arm in ("synthetic", "real")
    }
    z = real.image.shape[0] // 2
    save_panels(
        OUT / "report.png",
        [
            ("real (held back), z slice", real.image[z], False),
            ("synthetic, z slice", synth.image[synth.image.shape[0] // 2], False),
            ("trained on synthetic", preds["synthetic"][z], True),
            ("trained on real labels", preds["real"][z], True),
            ("labels (approximate)", real.masks[z], True),
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
    realism_rows = "\n".join(
        f"| {r['name']} | {_cell(r['value'])} | {_cell(r['floor'])} | {_cell(r['ratio'], 1)} |"
        for r in realism["scores"]
    )
    timing_rows = "\n".join(f"| {k} | {v:.0f} |" for k, v in timings.items())
    estimates = "; ".join(f"{k} {v}" for k, v in fitted["estimates"].items())
    text = f"""# Annotation-free 3D segmentation experiment

Data: data/cells3d (60 x 256 x 256, voxel 0.29 x 0.26 x 0.26 um; 20 nuclei with approximate,
uncurated labels): left half (x < 128) = training part, right half = held back.
Budgets: 3D DDPM patch {PATCH}, batch 4, {ddpm_summary()}; {BUDGET["n_synthetic"]} synthetic
volumes ({BUDGET["synthesis_steps"]} respaced DDPM steps from t_start {t_start}); Cellpose
{BUDGET["seg_epochs"]} epochs of {IMAGES_PER_EPOCH} slices for each arm (the same optimizer
steps and crops){" (FAST smoke run)" if FAST else ""}. Prediction in Cellpose's 3D mode.

`simulate fit` on the unlabelled training image: {estimates}.
Noise analysis recommended t_start = {analysis["recommended_t_start"]}; used {t_start}.

| Cellpose trained on | Dice | AP@0.5 | AP@0.75 | F1@0.5 |
|---|---|---|---|---|
{chr(10).join(rows)}

The labels are approximate (not curated), so the scores of both arms carry their errors.

![real | synthetic | predictions | labels](report.png)

Realism of the synthetic set against the real training part (`cellsynth evaluate --unpaired`;
floor = the same distance between two halves of the real part):

| distance | synthetic vs real | floor | x floor |
|---|---|---|---|
{realism_rows}

| stage | seconds |
|---|---|
{timing_rows}
"""
    (OUT / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
