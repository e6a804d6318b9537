"""How `segment train` trains Cellpose: the one place its defaults are written.

cellpose- and torch-free, so the CLI reads its option defaults from here at start-up and the
pipeline's recipe starts from the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

from cellsynth_cli.defaults import SEED


@dataclass(frozen=True)
class SegmenterTraining:
    epochs: int = 100
    learning_rate: float = 0.2  # SGD with momentum 0.9: cellpose's own CLI default
    bsize: int = 224  # training crop side in pixels
    batch: int = 8  # crops per step
    slices: str = "all"  # 3D: xy + resampled xz / yz slices ("xy": xy slices only)
    background_crops: int = 4  # with --background: nucleus-free squares of real images
    seed: int = SEED


TRAINING = SegmenterTraining()


MODES = ("3d", "stitch")  # 3D prediction: Cellpose's 3D mode, or 2D masks stitched across z
MODE = "3d"
# QC judges: a trained Cellpose folder, or the classical segmenter (no model, no labels)
JUDGES = ("model", "classical")
JUDGE = "model"
MAX_SHARE = 1.0  # QC: the largest phantom / vanished share a volume may have (1: keep all)
# Predicted objects smaller than this share of a typical cell (a ball of the training
# diameter) are dropped, per image dimensionality. 3D: Cellpose's 3D mode leaves fragments
# inside and beside nuclei; 0.1 lifted AP@0.5 of every model of the 3D experiment, synthetic
# and real-label, on both halves (docs/experiments.md). 2D: off (not measured).
MIN_SIZE_FRACTION = {2: 0.0, 3: 0.1}
