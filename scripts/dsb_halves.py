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
    """The halves under OUT; a file already holding the same pixels is left as it is, so the
    pipeline's stamps (which see file times) keep a finished run finished."""
    image = tifffile.imread(DSB / "dsb2018.tif")
    masks = tifffile.imread(DSB / "dsb2018_masks.tif")
    folders = {}
    for name, half in HALVES.items():
        folders[name] = out / name
        write_if_changed(folders[name] / "dsb.tif", image[half])
        write_if_changed(folders[name] / "dsb_masks.tif", masks[half])
    # the DDPM and `simulate fit` see the image only
    folders["real_train_unlabelled"] = out / "real_train_unlabelled"
    write_if_changed(folders["real_train_unlabelled"] / "dsb.tif", image[HALVES["real_train"]])
    return folders


def write_if_changed(path: Path, pixels: np.ndarray) -> None:
    try:
        if np.array_equal(tifffile.imread(path), pixels):
            return
    except (OSError, ValueError):  # none yet, or unreadable: (re)write it
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, pixels)


if __name__ == "__main__":
    for name, folder in split(Path(sys.argv[1])).items():
        print(f"{name}: {folder}")
