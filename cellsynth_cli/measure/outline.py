"""Where nuclei end against where their masks end: the mean intensity profile across the mask
outlines of a labelled set, and two numbers from it.

Each pixel within REACH of an outline gets its signed distance to it (negative inside a mask,
positive outside; in-plane, slice by slice in 3D) and its intensity on a per-image scale:
0 at the background (median of the pixels further than REACH from every mask), 1 at the
nuclei's interior (median of the pixels deeper than INTERIOR inside). A person draws an
outline where a nucleus visibly ends, about where it falls halfway to the background, so:

- crossing: where the profile falls through 0.5, in px past the outline (0: the mask ends
  where the nucleus does; > 0: the nucleus spills past its mask, the mask is tight);
- halo: the mean profile 1-3 px outside the outline (the glow past the outline; a sharp
  edge blurred by the microscope gives ~0.1).

Used to compare synthetic images with their simulated masks against real ones with their labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellsynth_cli import io

REACH = 6  # px either side of the outline
INTERIOR = 3  # px inside: the nuclei's own level
HALO = (1, 3)  # px outside, inclusive: the halo's band


@dataclass(frozen=True)
class OutlineProfile:
    distances: np.ndarray  # signed px, -REACH..REACH
    profile: np.ndarray  # mean scaled intensity per distance (nan where no pixel)

    @property
    def crossing(self) -> float:
        """Where the profile falls through 0.5, in px past the outline (linear between pixels;
        the outline lies between distance 0, the last pixel inside, and 1, the first out)."""
        d, p = self.distances, self.profile
        for i in range(len(d) - 1):
            if p[i] >= 0.5 > p[i + 1]:
                return float(d[i] + (p[i] - 0.5) / (p[i] - p[i + 1]) - 0.5)
        return float("nan")

    @property
    def halo(self) -> float:
        band = (self.distances >= HALO[0]) & (self.distances <= HALO[1])
        return float(np.nanmean(self.profile[band]))

    def to_dict(self) -> dict:
        return {
            "crossing_px": round(self.crossing, 2),
            "halo": round(self.halo, 3),
            "profile": {
                int(d): round(float(p), 3)
                for d, p in zip(self.distances, self.profile, strict=True)
            },
        }


def outline_profile(directory: Path) -> OutlineProfile:
    """The profile over every volume with masks in DIRECTORY."""
    distances = np.arange(-REACH, REACH + 1)
    sums, counts = np.zeros(len(distances)), np.zeros(len(distances))
    for volume in io.read_volumes(directory):
        if volume.masks is None or not (volume.masks > 0).any():
            continue
        image, labels = np.asarray(volume.image, np.float64), volume.masks
        planes = zip(image, labels, strict=True) if image.ndim == 3 else [(image, labels)]
        for plane, masks in planes:
            scaled, signed = _scaled(plane, masks)
            if scaled is None:
                continue
            near = np.abs(signed) <= REACH
            index = signed[near] + REACH
            sums += np.bincount(index, scaled[near], minlength=len(distances))
            counts += np.bincount(index, minlength=len(distances))
    with np.errstate(invalid="ignore"):
        return OutlineProfile(distances, sums / counts)


def _scaled(plane: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """PLANE on the 0 (background) - 1 (interior) scale, and each pixel's signed distance."""
    inside = masks > 0
    depth = ndimage.distance_transform_edt(inside)
    away = ndimage.distance_transform_edt(~inside)
    # outline pixels: the last inside (-0.5 -> 0) and first outside (+0.5 -> 1) rows
    signed = np.where(inside, -np.ceil(depth - 1), np.ceil(away)).astype(int)
    interior, background = plane[depth > INTERIOR], plane[away > REACH]
    if interior.size == 0 or background.size == 0:
        return None, signed
    low, high = float(np.median(background)), float(np.median(interior))
    if high <= low:
        return None, signed
    return (plane - low) / (high - low), signed
