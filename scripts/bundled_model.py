"""`make bundled-model`: train the demo DDPM that ships as `bundled:dsb2018-nuclei`, and export it.

The exact recipe (TRAIN_ARGS below, the same as `make experiment`'s DDPM): `cellsynth train`
on the left half of data/dsb2018 (image only, 256 x 256), 6000 steps of batch 8 at patch
128 x 128, seed 0; about 35-40 min on a 2-core CPU (0.33 s/step), a few minutes on a GPU.
The export keeps the EMA weights (fp32, ~4 MB), the network's configuration, the intensity
normalisation and a provenance record; config.json, loss.csv and loss.png go beside it.

    python scripts/bundled_model.py                      # train into bundled_build/, export
    python scripts/bundled_model.py --from-run RUN       # export a run made with TRAIN_ARGS
    python scripts/bundled_model.py --conditional [--from-run RUN]
        # the same recipe with `--condition pseudo-sketch`: bundled:dsb2018-nuclei-conditional,
        # the DDPM of `make experiment` (the issue-12 study's best row)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import dsb_halves
import torch

REPO = Path(__file__).resolve().parent.parent
NAME = "dsb2018-nuclei"
TARGET = REPO / "cellsynth_cli" / "models" / NAME
CS = str(Path(sys.executable).parent / "cellsynth")
TRAIN_ARGS = [
    "--patch", "128,128", "--batch", "8", "--steps", "6000", "--lr", "5e-4",
    "--seed", "0", "--checkpoint-every", "500",
]  # fmt: skip
# what a run must have been trained with to be exported as this model
RECIPE = {"patch": [128, 128], "batch": 8, "steps": 6000, "lr": 5e-4, "seed": 0, "dims": 2}


CONDITION_ARGS = ["--condition", "pseudo-sketch"]


def train(build: Path, condition: str) -> Path:
    folders = dsb_halves.split(build)
    run = build / f"run-{condition}"
    command = [CS, "train", "--data", str(folders["real_train_unlabelled"]), "-o", str(run)]
    extra = CONDITION_ARGS if condition != "none" else []
    subprocess.run([*command, *TRAIN_ARGS, *extra, "--overwrite"], check=True)
    return run


def check_recipe(run: Path, condition: str) -> dict:
    config = json.loads((run / "config.json").read_text())
    made = config["train"]
    differ = {k: (made.get(k), v) for k, v in {**RECIPE, "condition": condition}.items()}
    differ = {k: pair for k, pair in differ.items() if made.get(k, "none") != pair[1]}
    if differ:
        sys.exit(f"{run} was not trained with the bundled recipe: {differ}")
    if not str(made["data"]).rstrip("/").endswith("real_train_unlabelled"):
        sys.exit(f"{run} was trained on {made['data']}, not the left half of data/dsb2018")
    return config


def export(run: Path, condition: str) -> Path:
    config = check_recipe(run, condition)
    name = NAME if condition == "none" else f"{NAME}-conditional"
    target = TARGET.parent / name
    extra = " " + " ".join(CONDITION_ARGS) if condition != "none" else ""
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    if int(state["step"]) != RECIPE["steps"]:
        sys.exit(f"{run} stopped at step {state['step']}, not {RECIPE['steps']}")
    log = (run / "loss.csv").read_text().split()[1:]
    seconds = float(log[-1].split(",")[3])
    last_loss = sum(float(row.split(",")[1]) for row in log[-100:]) / min(100, len(log))
    provenance = {
        "name": f"bundled:{name}",
        "what": "a demo DDPM for 2D fluorescence nuclei, not a general-purpose model"
        + (" (conditioned on pseudo-sketches: synthesis follows the sketch)" if extra else ""),
        "data": "data/dsb2018/dsb2018.tif, left half (256 x 256 of 256 x 512), image only "
        "(no labels); the right half is held back for scoring",
        "data_source": "2018 Data Science Bowl (BBBC038, Caicedo et al., Nature Methods 2019; "
        "CC0), as shipped in the stardist 0.9.2 wheel (BSD-3)",
        "command": "cellsynth train --data real_train_unlabelled " + " ".join(TRAIN_ARGS) + extra,
        "rebuild": "make bundled-model" + (" BUNDLED_ARGS=--conditional" if extra else ""),
        "steps": int(state["step"]),
        "train_seconds": round(seconds),
        "last_100_mean_loss": round(last_loss, 5),
        "trained": date.today().isoformat(),
    }
    bundled = {
        key: state[key]
        for key in ("format", "format_version", "config", "unet", "normalization", "dims", "step")
    }
    bundled["config"] = {**bundled["config"], "data": provenance["data"]}
    bundled["ema"] = {k: v.float().contiguous() for k, v in state["ema"].items()}
    bundled["provenance"] = provenance
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / ".checkpoint.pt.tmp"
    torch.save(bundled, tmp)
    tmp.replace(target / "checkpoint.pt")
    config["train"]["data"] = provenance["data"]  # not this machine's path
    config["provenance"] = provenance
    (target / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for file in ("loss.csv", "loss.png"):
        shutil.copyfile(run / file, target / file)
    print(f"exported {run} -> {target} ({(target / 'checkpoint.pt').stat().st_size / 1e6:.1f} MB)")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--from-run", type=Path, help="export this run instead of training")
    parser.add_argument("--build", type=Path, default=REPO / "bundled_build")
    parser.add_argument(
        "--conditional", action="store_true", help="the pseudo-sketch conditioned model"
    )
    args = parser.parse_args()
    condition = "pseudo-sketch" if args.conditional else "none"
    export(args.from_run or train(args.build, condition), condition)


if __name__ == "__main__":
    main()
