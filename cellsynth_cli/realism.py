"""Set-level realism: how far a synthetic image set is from a real one when nothing pairs.

Images synthesized from simulated sketches have no real counterpart, so PSNR/SSIM cannot be
computed. Instead both sets are compared as distributions:

- intensity, gradient magnitude (Gaussian derivative, sigma 1) and local texture (standard
  deviation in a 5-voxel window): histograms on common bins, KL divergence (real || synthetic)
  and Bhattacharyya distance, as the noise analysis does;
- nuclei found by the LoG blob detector: Kolmogorov-Smirnov distance of their radius and
  brightness distributions, and |ln| of the ratio of their densities.

Every distance comes with a floor: the same distance between two halves of the real set
(each real volume cut in two along its longest axis). A synthetic set at the floor is as
close to the real set as the real data are to themselves; the ratio says how many times
farther it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from cellsynth_cli import io
from cellsynth_cli.detect import Detections, detect_nuclei
from cellsynth_cli.errors import InputError
from cellsynth_cli.metrics import bhattacharyya_distance, histogram, kl_divergence

FEATURES = ("intensity", "gradient", "texture")
BINS = 128
INTENSITY_RANGE = (-0.25, 1.25)  # the [0, 1] scale of the real set, with room either side
GRADIENT_SIGMA = 1.0
TEXTURE_WINDOW = 5
FEATURE_PERCENTILE = 99.5  # gradient/texture bins span 0 .. 1.5 x this percentile of real
SAMPLES_PER_VOLUME = 200_000  # values per volume kept to set the scale and the bins
MIN_OBJECTS = 3  # fewer detections than this: no object statistics


@dataclass
class _SetStats:
    """Histograms and detections accumulated over one set (or one half of the real set)."""

    hists: dict[str, np.ndarray]
    radii: list[np.ndarray] = field(default_factory=list)
    brightness: list[np.ndarray] = field(default_factory=list)
    n_objects: int = 0
    n_voxels: int = 0

    @classmethod
    def empty(cls) -> _SetStats:
        return cls(hists={f: np.zeros(BINS) for f in FEATURES})

    def add(
        self,
        features: dict[str, np.ndarray],
        detections: Detections,
        keep: np.ndarray,
        ranges: dict[str, tuple[float, float]],
        region: tuple[slice, ...],
    ) -> None:
        for name in FEATURES:
            self.hists[name] += histogram(features[name][region], BINS, ranges[name])
        self.radii.append(detections.equivalent_radius[keep])
        self.brightness.append(detections.brightness[keep])
        self.n_objects += int(keep.sum())
        self.n_voxels += int(features["intensity"][region].size)

    def objects(self) -> dict:
        radii = np.concatenate(self.radii) if self.radii else np.zeros(0)
        bright = np.concatenate(self.brightness) if self.brightness else np.zeros(0)
        return {
            "n": self.n_objects,
            "radius_median": float(np.median(radii)) if len(radii) else None,
            "brightness_median": float(np.median(bright)) if len(bright) else None,
            "per_megavoxel": 1e6 * self.n_objects / max(self.n_voxels, 1),
            "_radii": radii,
            "_brightness": bright,
        }


@dataclass
class Realism:
    """Distances synthetic vs real, each with the real set's split-half floor."""

    scores: list[dict]  # name, value, floor, ratio
    objects: dict[str, dict]  # "pred" / "ref": n, radius_median, brightness_median, density
    n_pred: int
    n_ref: int
    scale: dict[str, float]

    def to_dict(self) -> dict:
        return {
            "mode": "unpaired",
            "scores": self.scores,
            "objects": self.objects,
            "n_pred": self.n_pred,
            "n_ref": self.n_ref,
            "scale": self.scale,
        }


def feature_maps(unit: np.ndarray) -> dict[str, np.ndarray]:
    """Per-voxel intensity, gradient magnitude and local standard deviation of a [0, 1] image."""
    x = unit.astype(np.float32)
    mean = ndimage.uniform_filter(x, TEXTURE_WINDOW, mode="reflect")
    mean_sq = ndimage.uniform_filter(x * x, TEXTURE_WINDOW, mode="reflect")
    return {
        "intensity": x,
        "gradient": ndimage.gaussian_gradient_magnitude(x, GRADIENT_SIGMA, mode="reflect"),
        "texture": np.sqrt(np.maximum(mean_sq - mean * mean, 0.0)),
    }


def _images(directory: Path, role: str) -> Iterator[io.Volume]:
    for volume in io.read_volumes(directory):
        if volume.image is None:
            raise InputError(f"{directory}/{volume.name}: no intensity image ({role} set)")
        yield volume


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    flat = values.ravel()
    if flat.size <= SAMPLES_PER_VOLUME:
        return flat
    return flat[rng.integers(0, flat.size, SAMPLES_PER_VOLUME)]


def _halves(shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...], int, int]:
    """Two halves along the longest axis: (region A, region B, axis, cut)."""
    axis = int(np.argmax(shape))
    cut = shape[axis] // 2
    a = tuple(slice(0, cut) if i == axis else slice(None) for i in range(len(shape)))
    b = tuple(slice(cut, None) if i == axis else slice(None) for i in range(len(shape)))
    return a, b, axis, cut


def _distances(p: _SetStats, q: _SetStats) -> dict[str, float | None]:
    """Every distance between set P (real or real half) and set Q."""
    out: dict[str, float | None] = {}
    for name in FEATURES:
        out[f"{name}_kld"] = kl_divergence(p.hists[name], q.hists[name])
        out[f"{name}_bhattacharyya"] = bhattacharyya_distance(p.hists[name], q.hists[name])
    po, qo = p.objects(), q.objects()
    enough = po["n"] >= MIN_OBJECTS and qo["n"] >= MIN_OBJECTS
    out["radius_ks"] = (
        float(stats.ks_2samp(po["_radii"], qo["_radii"]).statistic) if enough else None
    )
    out["brightness_ks"] = (
        float(stats.ks_2samp(po["_brightness"], qo["_brightness"]).statistic) if enough else None
    )
    out["density_log_ratio"] = (
        abs(float(np.log(qo["per_megavoxel"] / po["per_megavoxel"]))) if enough else None
    )
    return out


def compare_sets(
    pred_dir: Path,
    ref_dir: Path,
    seed: int = 0,
    on_volume: Callable[[str], None] | None = None,
) -> Realism:
    """Distances between the synthetic set PRED_DIR and the real set REF_DIR, with floors."""
    rng = np.random.default_rng(seed)
    # pass 1: the real set's intensity scale (robust percentiles, as training uses)
    from cellsynth_cli.intensity import HIGH_PERCENTILE, LOW_PERCENTILE, to_unit

    samples = [_sample(v.image.astype(np.float64), rng) for v in _images(ref_dir, "real")]
    values = np.concatenate(samples)
    if not np.isfinite(values).all():
        raise InputError(f"{ref_dir}: images contain NaN or infinite values")
    lo, hi = (float(v) for v in np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    hi = hi if hi > lo else lo + 1.0
    # pass 2: bins of gradient and texture from the real set
    feature_samples: dict[str, list[np.ndarray]] = {"gradient": [], "texture": []}
    for volume in _images(ref_dir, "real"):
        features = feature_maps(to_unit(volume.image, lo, hi, clip=False))
        for name in feature_samples:
            feature_samples[name].append(_sample(features[name], rng))
    ranges = {"intensity": INTENSITY_RANGE}
    for name, parts in feature_samples.items():
        top = float(np.percentile(np.concatenate(parts), FEATURE_PERCENTILE)) * 1.5
        ranges[name] = (0.0, top if top > 0 else 1.0)
    # pass 3: histograms and detections; the real set also as two halves (the floor)
    ref, half_a, half_b, pred = (_SetStats.empty() for _ in range(4))
    n_ref = n_pred = 0
    for role, directory in (("real", ref_dir), ("synthetic", pred_dir)):
        for volume in _images(directory, role):
            unit = to_unit(volume.image, lo, hi, clip=False)
            if not np.isfinite(unit).all():
                raise InputError(
                    f"{directory}/{volume.name}: image contains NaN or infinite values"
                )
            features = feature_maps(unit)
            found = detect_nuclei(np.clip(unit, 0, 1), volume.voxel_size)
            everything = tuple(slice(None) for _ in unit.shape)
            every_blob = np.ones(len(found), bool)
            if role == "real":
                n_ref += 1
                ref.add(features, found, every_blob, ranges, everything)
                a, b, axis, cut = _halves(unit.shape)
                in_a = found.centres[:, axis] < cut if len(found) else every_blob
                half_a.add(features, found, in_a, ranges, a)
                half_b.add(features, found, ~in_a, ranges, b)
            else:
                n_pred += 1
                pred.add(features, found, every_blob, ranges, everything)
            if on_volume:
                on_volume(volume.name)
    value = _distances(ref, pred)
    floor = _distances(half_a, half_b)
    scores = []
    for name, v in value.items():
        f = floor[name]
        ratio = v / f if v is not None and f else None
        scores.append({"name": name, "value": v, "floor": f, "ratio": ratio})
    objects = {}
    for key, s in (("pred", pred), ("ref", ref)):
        objects[key] = {k: v for k, v in s.objects().items() if not k.startswith("_")}
    return Realism(
        scores=scores, objects=objects, n_pred=n_pred, n_ref=n_ref, scale={"low": lo, "high": hi}
    )


def write_realism_csv(realism: Realism, path: Path, overwrite: bool = False) -> Path:
    """One row per distance: name, value, floor, ratio (empty where not defined)."""
    import csv

    with io.atomic_file(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["distance", "value", "floor", "ratio"])
        for row in realism.scores:
            writer.writerow(
                [
                    "" if row[k] is None else f"{row[k]:.6g}" if k != "name" else row[k]
                    for k in ("name", "value", "floor", "ratio")
                ]
            )
    return Path(path)
