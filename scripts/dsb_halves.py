"""The bundled DSB image cut in two: the left half trains (image only), the right is held back.

Used by `make demo`, `make demo-full`, `make bundled-model` and `make experiment`, so they all
train and fit on the same pixels and score on the same held-back ones.
    python scripts/dsb_halves.py OUT   ->  OUT/real_train/ (image + masks),
    OUT/real_train_unlabelled/ (image only), OUT/real_test/ (image + masks)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parent.parent
DSB = REPO / "data" / "dsb2018"
HALVES = {"real_train": np.s_[:, :256], "real_test": np.s_[:, 256:]}


def split(out: Path) -> dict[str, Path]:
    image = tifffile.imread(DSB / "dsb2018.tif")
    masks = tifffile.imread(DSB / "dsb2018_masks.tif")
    folders = {}
    for name, half in HALVES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / "dsb.tif", image[half])
        tifffile.imwrite(folder / "dsb_masks.tif", masks[half])
        folders[name] = folder
    # the DDPM and `simulate fit` see the image only
    unlabelled = out / "real_train_unlabelled"
    unlabelled.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(unlabelled / "dsb.tif", image[HALVES["real_train"]])
    folders["real_train_unlabelled"] = unlabelled
    return folders


if __name__ == "__main__":
    for name, folder in split(Path(sys.argv[1])).items():
        print(f"{name}: {folder}")
