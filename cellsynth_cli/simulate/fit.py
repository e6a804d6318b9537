"""`simulate fit`: a nuclei preset estimated from unannotated real images.

The images are scaled like training does (robust percentiles of the whole set to [0, 1], the
scale sketches live on), nuclei are found with the nucleus detector (LoG or watershed seeds,
one kind for the whole set, each nucleus measured on its half-maximum region, see detect.py),
and from them:

- radius: the regions' equal-area (equal-volume) radius of whole nuclei, 20th-80th
  percentile, widened for the squeezed axes the simulator applies (scale_x, scale_z);
  spread "wide" takes the 2nd-98th percentile of this and of every other range below, so the
  rare small, large, dim or bright nuclei are simulated too (the simulator draws uniformly
  within a range, so the central ranges never make them);
- aspect ratio (scale_x): minor/major axis of each nucleus's in-plane half-maximum region
  (in 3D measured in the centre slice; the simulator rotates its ellipsoids in 3D, so its
  slices come out a little rounder than scale_x: sx 0.6 gives a median slice ratio ~0.66);
- z (3D): the z / in-plane extent of each nucleus's region in micrometres (scale_z), and the
  z squeeze of the voxel size (anisotropy);
  nuclei clearly flatter in z than in-plane are rotated about z only (they lie flat);
- count per volume (n_cells; regions cut by the border count by their size), the shape and
  voxel size of the volumes;
- brightness: the regions' mean brightness on the sketch scale, 2nd-98th percentile (dim
  nuclei included: LoG seeds dimmer than the local threshold keep a region of their own; the
  top reaches the few brightest nuclei, see SPREADS);
- foreground: "full" when the nuclei spread over the image, else a centred ellipsoid
  fitted to their positions.
No masks are read. The result is a TOML preset for the generic `nuclei` simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellsynth_cli import io
from cellsynth_cli.errors import InputError
from cellsynth_cli.io.intensity import robust_range, to_unit
from cellsynth_cli.measure.detect import (
    CANONICAL_RADIUS,
    Detections,
    bright_foreground,
    choose_detector,
    detect_in,
)
from cellsynth_cli.simulate.config import (
    FIT_SPREAD,
    SimulationConfig,
    load_preset,
    replace,
    toml_value,
)

GENERIC_PRESET = "nuclei"
MIN_DETECTIONS = 5
FULL_REGION_COVER = 0.7  # a fitted ellipsoid covering this much of the image means "full"
MOMENT_WINDOW = 1.5  # radii around a centre used for its in-plane intensity moments
FLAT_Z = 0.9  # z / in-plane extent below which fitted 3D nuclei are rotated about z only
# the nuclei found should make up the images' bright foreground (count x size): on the bench
# 0.91-1.27 of it (more where dim nuclei lie under its threshold); 0.65 where the detector cut
# large textured nuclei into pieces (docs/experiments.md)
EXPLAINED_FOREGROUND = 0.75
# percentiles of the detections each range spans: (sizes, brightness, other ranges), by spread.
# Brightness reaches the few brightest nuclei (98 %): the simulator draws uniformly within the
# range, and a range cut at 90 % never makes them. Measured on the bundled left half (standard
# pipeline, one DDPM, Cellpose seed 0): 10-90 % (0.20-0.55) drew Cellpose outlines at 0.95x
# the real area, AP@0.75 0.585; 10-98 % (0.20-0.81) at 1.09x (real-label model 1.05x),
# AP@0.75 0.684 (0.600-0.684 over Cellpose seeds 0-2). It reaches the dim ones too (2 %): a dim
# tail is a population, not outliers (HeLa-like frames: 17 % of the labelled nuclei lay under
# the 10th percentile); on the bench the labelled nuclei inside the range went from 51-100 %
# to 57-100 % (docs/experiments.md).
SPREADS = {"central": ((20, 80), (2, 98), (10, 90)), "wide": ((2, 98), (2, 98), (2, 98))}


@dataclass
class Fit:
    """A fitted preset, what it was estimated from, and the detections (for the picture)."""

    config: SimulationConfig
    estimates: dict[str, float | list[float] | str]
    detections: list[Detections] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # where its own checks disagree
    intensity_scale: tuple[float, float] = (0.0, 1.0)  # the images' values at 0 and 1


def _aspect_ratios(image: np.ndarray, found: Detections) -> np.ndarray:
    """Minor/major axis ratio of each nucleus from the second moments of its in-plane shape.

    The shape is the connected region around the centre brighter than halfway between the
    local background (the window's 20th percentile) and the centre, in the centre slice for
    3D volumes; a region that runs into the window's edge (merged with neighbours) is skipped.
    """
    from scipy import ndimage

    ratios = []
    for centre, radius in zip(found.centres, found.equivalent_radius, strict=True):
        plane = image[int(centre[0])] if image.ndim == 3 else image
        cy, cx = int(centre[-2]), int(centre[-1])
        h = int(np.ceil(MOMENT_WINDOW * radius)) + 1
        y0, x0 = max(0, cy - h), max(0, cx - h)
        window = ndimage.gaussian_filter(plane[y0 : cy + h + 1, x0 : cx + h + 1], 1.0)
        background = np.percentile(window, 20)
        level = background + 0.5 * (window[cy - y0, cx - x0] - background)
        labels, _ = ndimage.label(window > level)
        region = labels == labels[cy - y0, cx - x0]
        if labels[cy - y0, cx - x0] == 0 or region.sum() < 5:
            continue
        if region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any():
            continue
        cov = np.cov(np.stack(np.nonzero(region)).astype(float), bias=True)
        small, large = np.sqrt(np.clip(np.linalg.eigvalsh(cov), 1e-12, None))
        ratios.append(small / large)
    return np.asarray(ratios)


def _z_extent(found: list[Detections], percentiles: tuple[float, float]) -> tuple[float, float]:
    """The given percentiles of the z / in-plane extent of whole nuclei, in micrometres (from
    each region's spread per axis)."""
    ratios = []
    for d in found:
        in_plane = d.radii[d.complete] / np.asarray(d.axis_scale)
        ratios.append(in_plane[:, 0] / np.sqrt(in_plane[:, 1] * in_plane[:, 2]))
    ratios = np.concatenate(ratios)
    if len(ratios) == 0:
        return 1.0, 1.0
    lo, hi = (float(v) for v in np.percentile(ratios, percentiles))
    return round(lo, 3), round(max(hi, lo), 3)


def _region(found: list[Detections], shape: tuple[int, ...]) -> tuple[str, tuple[float, float]]:
    """'full', or 'ellipsoid' with region_size, from where the nuclei are."""
    centres = np.concatenate([d.centres for d in found]).astype(float)
    # a uniformly filled ellipsoid with semi-axis a has variance a^2 / (ndim + 2) along it
    semi = np.sqrt((len(shape) + 2) * centres.var(axis=0))
    half = np.asarray(shape, float) / 2
    fraction = np.clip(semi / half, 0.05, 1.0)
    # in 3D the few z slices say little: the in-plane extent decides
    in_plane = fraction[-2:]
    if np.prod(in_plane) * np.pi / 4 >= FULL_REGION_COVER:
        return "full", (0.8, 0.9)
    f = float(np.mean(in_plane))
    return "ellipsoid", (round(max(0.05, f * 0.95), 3), round(min(1.0, f * 1.05), 3))


def fit_nuclei(
    data: Path,
    on_volume: Callable[[str], None] | None = None,
    spread: str = FIT_SPREAD,
    radius: float | None = None,
) -> Fit:
    """Estimate a nuclei preset from the images in DATA (masks, if any, are not read).

    spread: "central" ranges (the usual nucleus) or "wide" ones (rare ones too): SPREADS.
    radius: the typical nucleus radius in pixels, where the measured one is wrong (it only
    decides how much the images are shrunk for the detector; sizes are still measured)."""
    if radius is not None and radius <= 0:
        raise InputError(f"the nucleus radius must be a positive number of pixels, got {radius}")
    if spread not in SPREADS:
        raise InputError(f"spread must be one of {', '.join(SPREADS)}, got {spread!r}")
    size_pct, bright_pct, other_pct = SPREADS[spread]
    volumes = io.read_images(data, "fit")
    images = [v.image for v in volumes]
    lo, hi = robust_range(images)
    units = [to_unit(image, lo, hi) for image in images]  # the sketch scale, each image once
    method, found = _detect_all(volumes, units, radius, on_volume)
    names = [v.name for v in volumes]
    n_found = sum(len(d) for d in found)
    if n_found < MIN_DETECTIONS or not any(d.complete.any() for d in found):
        raise InputError(
            f"{data}: found only {n_found} nuclei in {len(found)} image(s); a fit needs at "
            f"least {MIN_DETECTIONS} (are these bright nuclei on a dark background?)"
        )
    radii = np.concatenate([d.equivalent_radius[d.complete] for d in found])
    brightness = np.concatenate([d.brightness for d in found])
    aspects = np.concatenate(
        [_aspect_ratios(unit, d) for unit, d in zip(units, found, strict=True)]
    )
    aspect_lo, aspect_hi = (
        tuple(float(v) for v in np.percentile(aspects, other_pct)) if len(aspects) else (1.0, 1.0)
    )
    aspect_lo, aspect_hi = min(aspect_lo, 1.0), min(max(aspect_hi, aspect_lo), 1.0)
    counts = [d.count for d in found]
    shape = tuple(int(s) for s in np.median([im.shape for im in images], axis=0))
    voxel = next((v.voxel_size for v in volumes if v.voxel_size), None) or (1.0,) * len(shape)
    ndim = len(shape)
    z_lo, z_hi = _z_extent(found, size_pct) if ndim == 3 else (1.0, 1.0)
    # the simulator draws semi-axes (sz r, r, sx r) (2D: (r, sx r)) with sx, sz uniform: its
    # equal-volume radius is r (sx sz)^(1/ndim), so r is widened to match the detector's
    # equal-volume radii on average
    sx = np.linspace(aspect_lo, aspect_hi, 21)[:, None]
    sz = np.linspace(z_lo, z_hi, 21)[None, :] if ndim == 3 else np.ones((1, 1))
    widen = 1.0 / float(np.mean((sx * sz) ** (1.0 / ndim)))
    radius_pct = np.percentile(radii, size_pct)
    r_lo, r_hi = (float(v) * widen for v in radius_pct)
    bright_lo, bright_hi = (float(v) for v in np.percentile(brightness, bright_pct))
    region, region_size = _region(found, shape)
    count_lo = max(1, int(np.floor(min(counts) * 0.9)))
    count_hi = max(count_lo, int(np.ceil(max(counts) * 1.1)))
    changes: dict = {
        "preset": f"fit:{Path(data).name}",
        "shape": list(shape),
        "voxel_size": [float(v) for v in voxel],
        "n_cells": [count_lo, count_hi],
        "radius": [round(r_lo, 2), round(max(r_hi, r_lo), 2)],
        "scale_x": [round(aspect_lo, 3), round(aspect_hi, 3)],
        "intensity": [round(bright_lo, 3), round(max(bright_hi, bright_lo), 3)],
        "region": region,
        "region_size": list(region_size),
    }
    if ndim == 3:
        # the z semi-axis, sz r in micrometres, is (in-plane / z voxel size) of that in z voxels
        changes["anisotropy"] = round(float(voxel[-1]) / float(voxel[0]), 4)
        changes["scale_z"] = [round(z_lo, 3), round(z_hi, 3)]
        # nuclei clearly flatter in z than in-plane lie flat (adherent cells): keep them so
        changes["rotate_in_plane_only"] = bool((z_lo + z_hi) / 2 < FLAT_Z)
    config = replace(load_preset(GENERIC_PRESET), changes, source="simulate fit")
    ranges = {"radius": radius_pct, "aspect": (aspect_lo, aspect_hi), "z": (z_lo, z_hi)}
    estimates = _estimates(found, method, spread, radii, ranges, changes, (lo, hi))
    explained = _explained_foreground(volumes, units, found)
    estimates["nuclei / bright foreground (volume)"] = round(explained, 2)
    return Fit(config, estimates, found, names, _warnings(explained), (lo, hi))


def _explained_foreground(
    volumes: list[io.Volume], units: list[np.ndarray], found: list[Detections]
) -> float:
    """The nuclei found (count x size) over the images' bright foreground (UNITS: the images
    on the sketch scale), all images."""
    radius = float(np.median(np.concatenate([d.equivalent_radius for d in found])))
    foreground = sum(
        int(bright_foreground(unit, v.voxel_size, radius).sum())
        for v, unit in zip(volumes, units, strict=True)
    )
    return sum(d.volume for d in found) / max(foreground, 1)


def _warnings(explained: float) -> list[str]:
    """What a user should look at before simulating from the fit."""
    if explained >= EXPLAINED_FOREGROUND:
        return []
    return [
        f"the nuclei found make up only {explained:.0%} of the images' bright foreground: "
        "large or textured nuclei may be cut into pieces, or touching ones missed. Look at "
        "the fit's picture; if its circles are pieces of nuclei, give their typical radius "
        "(`simulate fit --radius PIXELS`; in the pipeline `--set fit.radius=PIXELS`)"
    ]


def _detect_all(
    volumes: list[io.Volume],
    units: list[np.ndarray],
    radius: float | None,
    on_volume: Callable[[str], None] | None,
) -> tuple[str, list]:
    """The detector chosen on all images (one for the whole set) and its nuclei per image
    (UNITS: the images on the sketch scale), found on the images shrunk when their nuclei are
    large (detect.detection_scale) and measured on the images themselves."""
    voxel_sizes = [v.voxel_size for v in volumes]
    detector, passes = choose_detector(units, voxel_sizes, radius)
    found = []
    for volume, unit, first in zip(volumes, units, passes, strict=True):
        found.append(detect_in(first, detector.method, unit, volume.voxel_size))
        if on_volume:
            on_volume(volume.name)
    return detector.method, found


def _estimates(
    found: list,
    method: str,
    spread: str,
    radii: np.ndarray,
    ranges: dict,
    changes: dict,
    intensity_scale: tuple[float, float],
) -> dict:
    """What was estimated, for people (the table `simulate fit` prints, the preset's header)."""
    size_pct, bright_pct, other_pct = SPREADS[spread]
    counts = [d.count for d in found]
    (aspect_lo, aspect_hi), (z_lo, z_hi) = ranges["aspect"], ranges["z"]
    region, region_size = changes["region"], changes["region_size"]
    estimates = {
        "images": len(found),
        "detector": method,
        "spread": spread,
        "nuclei found": sum(len(d) for d in found),
        "nuclei per image": f"{min(counts):.0f}-{max(counts):.0f}",
        # nuclei cut by the image border count by their size (detect.region_detections)
        "nuclei per image (mean)": round(float(np.mean(counts)), 2),
        "radius (px, median)": round(float(np.median(radii)), 2),
        f"radius (px, {size_pct[0]}-{size_pct[1]} %)": "{:.1f}-{:.1f}".format(*ranges["radius"]),
        f"aspect ratio ({other_pct[0]}-{other_pct[1]} %)": f"{aspect_lo:.2f}-{aspect_hi:.2f}",
        f"brightness ({bright_pct[0]}-{bright_pct[1]} %)": (
            f"{changes['intensity'][0]:.2f}-{changes['intensity'][1]:.2f}"
        ),
        "foreground": region if region == "full" else f"ellipsoid {tuple(region_size)}",
        "intensity scale (1-99.8 %)": "{:.4g}-{:.4g}".format(*intensity_scale),
    }
    if "anisotropy" in changes:
        estimates["z squeeze (in-plane / z voxel)"] = changes["anisotropy"]
        estimates[f"z / in-plane extent ({size_pct[0]}-{size_pct[1]} %)"] = f"{z_lo:.2f}-{z_hi:.2f}"
    return estimates


def to_toml(fit: Fit, data: Path) -> str:
    """The preset as TOML: every field that differs from the built-in defaults (so the file
    stands alone), with what was estimated as a header."""
    base = SimulationConfig().to_dict()
    lines = [
        f"# Fitted by `cellsynth simulate fit --data {data}` from the images alone (no masks).",
        *(f"#   {key}: {value}" for key, value in fit.estimates.items()),
        f'simulator = "{fit.config.simulator}"',
    ]
    for key, value in fit.config.to_dict().items():
        if key in ("preset", "simulator") or value == base[key]:
            continue
        lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def save_fit_picture(path: Path, fit: Fit, data: Path) -> Path:
    """The first image (max projection in 3D) with every detection drawn as a circle, and the
    outline of the bright foreground they should make up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Circle

    volume = next(v for v in io.read_volumes(data) if v.image is not None)
    image = volume.image.max(axis=0) if volume.image.ndim == 3 else volume.image
    found = fit.detections[0]
    radius = float(np.median(found.equivalent_radius)) if len(found) else CANONICAL_RADIUS
    unit = to_unit(volume.image, *fit.intensity_scale)
    foreground = bright_foreground(unit, volume.voxel_size, radius)
    foreground = foreground.any(axis=0) if foreground.ndim == 3 else foreground
    h, w = image.shape
    scale = 8.0 / max(h, w)
    fig, ax = plt.subplots(figsize=(w * scale + 0.2, h * scale + 0.6))
    lo, hi = np.percentile(image, [1, 99.8])
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
    if foreground.any():
        ax.contour(foreground, [0.5], colors="cyan", linewidths=0.6)
    for centre, r in zip(found.centres, found.equivalent_radius, strict=True):
        ax.add_patch(Circle((centre[-1], centre[-2]), r, fill=False, color="yellow", lw=0.8))
    explained = fit.estimates["nuclei / bright foreground (volume)"]
    lines = [
        f"{fit.names[0]}: {len(found)} nuclei found (yellow)"
        + (", max projection" if volume.image.ndim == 3 else ""),
        f"all images: they make up {explained:.0%} of the bright foreground (cyan)",
        *(["WARNING: see the warning simulate fit printed"] if fit.warnings else []),
    ]
    ax.set_title("\n".join(lines), fontsize=8, color="red" if fit.warnings else "black")
    ax.axis("off")
    fig.tight_layout()
    with io.atomic_file(path, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
