"""How `segment train` trains Cellpose: the one place its defaults are written.

cellpose- and torch-free, so the CLI reads its option defaults from here at start-up and the
pipeline's recipe starts from the same values.
"""

from __future__ import annotations

from dataclasses import dataclass

from cellsynth_cli.defaults import SEED
from cellsynth_cli.errors import InputError, check_choice


@dataclass(frozen=True)
class SegmenterTraining:
    epochs: int = 100
    learning_rate: float = 0.2  # SGD with momentum 0.9: cellpose's own CLI default
    bsize: int = 224  # training crop side in pixels
    batch: int = 8  # crops per step
    slices: str = "all"  # 3D: xy + resampled xz / yz slices ("xy": xy slices only)
    background_crops: int = 4  # with --background: nucleus-free squares of real images
    # each training crop's intensities times a factor drawn log-uniformly from [1/this, this]
    # (1: off): teaches outlines of nuclei brighter or dimmer than the training images' own
    # (segment/cellpose_compat.py random_brightness; docs/experiments.md)
    brightness_jitter: float = 1.0
    seed: int = SEED


TRAINING = SegmenterTraining()
MAX_BRIGHTNESS_JITTER = 10.0  # a larger factor would make nuclei like nothing a camera records


def check_brightness_jitter(value: float, name: str = "--brightness-jitter") -> None:
    if not 1.0 <= value <= MAX_BRIGHTNESS_JITTER:
        raise InputError(f"{name} must be in [1, {MAX_BRIGHTNESS_JITTER:g}], got {value}")


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
# An image whose cells are brighter, after Cellpose's per-image normalisation, than the
# segmenter's training nuclei is segmented again, dimmed to match (segment/brightness.py).
# On: it drew the bundled 2D held-back half's three brightest nuclei as tightly as the rest
# for synthetic and real-label models alike (docs/experiments.md).
MATCH_BRIGHTNESS = True
# Pseudo-labels (self-training) are drawn without it: round 2 trained on matched pseudo-labels
# missed the brightest held-back 2D nuclei entirely (8 nuclei missed against 3 from the same
# round 1's unmatched pseudo-labels, seed 0; seed 1's round 2 was as bad either way;
# docs/experiments.md).
PSEUDO_LABEL_MATCH_BRIGHTNESS = False


MIRROR_ONLY = ("background", "ignored")


@dataclass(frozen=True)
class PseudoLabelling:
    """Which predicted cells of a real image count as labels (segment/pseudo_labels.py)."""

    min_iou: float = 0.8  # IoU with the same cell found in the flipped image
    min_size: float = 0.25  # of a typical cell (a disc / ball of the training diameter)
    max_size: float = 4.0
    tile_cells: float = 4.0  # training crops are this many cell diameters on a side
    # pixels only the mirrored image's masks call a cell: taught as "background" (measured),
    # or "ignored" like the unconfident cells (not yet measured, docs/experiments.md)
    mirror_only: str = "background"

    def check(self) -> None:
        if not 0.0 < self.min_iou <= 1.0:
            raise InputError(f"pseudo-label min_iou must be in (0, 1], got {self.min_iou}")
        if not 0.0 <= self.min_size < self.max_size:
            raise InputError(
                f"pseudo-label sizes need 0 <= min_size < max_size, got "
                f"{self.min_size} and {self.max_size}"
            )
        if self.tile_cells < 1.0:
            raise InputError(f"pseudo-label tile_cells must be >= 1, got {self.tile_cells}")
        check_choice(self.mirror_only, MIRROR_ONLY, "pseudo-label mirror_only")


PSEUDO_LABELS = PseudoLabelling()
