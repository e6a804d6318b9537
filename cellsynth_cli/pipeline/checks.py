"""Checks of a pipeline run that need no labels: does what it segmented agree with what
`simulate fit` saw in the same images, and do its synthetic nuclei look like the real ones?

Each check is a measured value, the range a sound run stays in, and what to try when it does
not. The report tables them; the CLI prints a warning line for each one out of range.

- nuclei per image and median radius of the kept segmenter's masks on the user's images,
  against the fit's (two label-free estimates of the same nuclei: the fit sized from the
  images, the segmenter from what it learned on the synthetic set);
- the share of the images' bright foreground (detect.bright_foreground) the masks cover;
- the realism table's nucleus-radius distance (KS) against the real halves' own;
- where the synthetic nuclei end against their masks (measure/outline.py): a person draws
  an outline about where a nucleus falls halfway to the background, so masks the segmenter
  learns from should end there too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cellsynth_cli import io
from cellsynth_cli.measure.outline import outline_profile

# (low, high) a sound run stays within. Measured (docs/pipeline.md): the bundled image and
# stack's `make experiment` runs (AP@0.5 0.94 / 0.87 / 0.67) at count 1.03 / 1.21 / 1.20,
# radius 0.95 / 0.95 / 0.97, foreground covered 0.78 / 0.77 / 0.73; two quick-budget bench
# runs (AP@0.75 0.11 / 0.40) at count 0.72 / 0.74, foreground 0.58 / 0.67
COUNT_RATIO = (0.75, 1.33)
RADIUS_RATIO = (0.8, 1.25)
FOREGROUND_COVERED = (0.7, None)  # no upper bound
RADIUS_KS = (0.0, 2.5)
OUTLINE_CROSSING = (-1.0, 1.0)  # px past the mask outline


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    low: float
    high: float | None  # None: no upper bound
    advice: str  # what it means and what to try, when out of range

    @property
    def ok(self) -> bool:
        return self.low <= self.value and (self.high is None or self.value <= self.high)

    @property
    def sound(self) -> str:
        """The range a sound run stays in, for people."""
        return f"at least {self.low:g}" if self.high is None else f"{self.low:g} to {self.high:g}"

    def warning(self) -> str:
        return f"{self.name} is {self.value:.2f} (a sound run: {self.sound}): {self.advice}"

    def to_dict(self) -> dict:
        return {**asdict(self), "sound": self.sound, "ok": self.ok}


def run_checks(
    data: Path,
    predictions: Path,
    fit_estimates: dict,
    realism: list[dict],
    synthetic: Path | None = None,
) -> list[Check]:
    """The checks of a run on DATA whose kept segmenter wrote PREDICTIONS, trained on the
    SYNTHETIC set (images with their simulated masks)."""
    fitted_radius = float(fit_estimates["radius (px, median)"])
    measured = _masks_against_images(data, predictions, fitted_radius)
    fitted_count = float(
        fit_estimates.get("nuclei per image (mean)")  # a fit by cellsynth 0.2.0 has no mean
        or float(fit_estimates["nuclei found"]) / float(fit_estimates["images"])
    )
    if measured["count"] == 0:
        return [
            Check(
                "nuclei segmented per image",
                0.0,
                1.0,
                None,
                "the segmenter found none in your images: a larger budget (`--budget "
                "standard`), and look at report.png",
            ),
            *_synthetic_checks(realism, synthetic),
        ]
    checks = [
        Check(
            "segmented / fitted nuclei per image",
            measured["count"] / max(fitted_count, 1e-9),
            *COUNT_RATIO,
            "the segmenter splits or merges nuclei, or the fit miscounted them: compare "
            "fit.png with the predictions in napari; if the fit is wrong, `--set "
            "fit.radius=PIXELS`",
        ),
        Check(
            "segmented / fitted median radius",
            measured["radius"] / max(fitted_radius, 1e-9),
            *RADIUS_RATIO,
            "the segmenter draws nuclei of another size than the fit measured: pieces of nuclei "
            "(fit.png shows circles inside nuclei: `--set fit.radius=PIXELS`) or loose outlines",
        ),
        Check(
            "bright foreground covered by the masks",
            measured["covered"],
            *FOREGROUND_COVERED,
            "nuclei the segmenter does not find (dim ones, or ones unlike the synthetic set): "
            "look at report.png; `--set fit.spread=wide` simulates rarer nuclei",
        ),
    ]
    return checks + _synthetic_checks(realism, synthetic)


def _synthetic_checks(realism: list[dict], synthetic: Path | None) -> list[Check]:
    checks = []
    radius_ks = next((row for row in realism if row["name"] == "radius_ks"), None)
    if radius_ks is not None and np.isfinite(radius_ks["ratio"]):
        checks.append(
            Check(
                "synthetic nuclei's radius distance (x the real halves')",
                float(radius_ks["ratio"]),
                *RADIUS_KS,
                "the synthetic nuclei are sized unlike the real ones: check fit.png",
            )
        )
    crossing = outline_profile(synthetic).crossing if synthetic is not None else np.nan
    if np.isfinite(crossing):
        checks.append(
            Check(
                "synthetic nuclei end past their masks (px)",
                crossing,
                *OUTLINE_CROSSING,
                "the segmenter learns outlines tighter (> 0) or looser (< 0) than the nuclei "
                "it sees: compare a synthetic image with its masks in napari",
            )
        )
    return checks


def _masks_against_images(data: Path, predictions: Path, radius: float) -> dict[str, float]:
    """Masks per image counted as the fit counts its nuclei (detect.region_detections: one
    cut by the border by its size), the median equal-area (equal-volume, in in-plane voxels)
    radius of the whole ones, and the share of the images' bright foreground they cover."""
    from cellsynth_cli.io.intensity import robust_range, to_unit
    from cellsynth_cli.measure.detect import bright_foreground, region_detections

    volumes = io.read_images(data, "checks")
    lo, hi = robust_range([v.image for v in volumes])
    counts, radii, covered, foreground = [], [], 0, 0
    for volume in volumes:
        masks = io.read_volume(io.volume_path(predictions, volume.name)).masks.astype(np.int32)
        unit = to_unit(volume.image, lo, hi)
        segmented = region_detections(unit, masks, volume.voxel_size, "segmented")
        counts.append(segmented.count)
        radii.append(segmented.equivalent_radius[segmented.complete])
        bright = bright_foreground(unit, volume.voxel_size, radius)
        covered += int(np.sum(bright & (masks > 0)))
        foreground += int(bright.sum())
    radii = np.concatenate(radii)
    return {
        "count": float(np.mean(counts)),
        "radius": float(np.median(radii)) if len(radii) else 0.0,
        "covered": covered / max(foreground, 1),
    }
