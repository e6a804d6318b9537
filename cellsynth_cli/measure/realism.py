"""Set-level realism: how far a synthetic image set is from a real one when nothing pairs.

Images synthesized from simulated sketches have no real counterpart, so PSNR/SSIM cannot be
computed. Instead both sets are compared as distributions:

- intensity, gradient magnitude (Gaussian derivative, sigma 1) and local texture (standard
  deviation in a 5-voxel window): histograms on common bins, KL divergence (reference ||
  candidate) and Bhattacharyya distance, as the noise analysis does;
- nuclei found by the nucleus detector (LoG or watershed, chosen on the real set and used for
  both, see detect.py): Kolmogorov-Smirnov distance of their radius and brightness
  distributions, and |ln| of the ratio of their densities.

Every distance comes with a floor measured the same way, at the same sample size. The real
set is split into halves A and B by volume (or, when it is one volume, into the two halves
of that volume along its longest axis; synthetic volumes are then halved too). The floor is
d(A, B). The value is d(A, S) for groups S of synthetic units as many as B, averaged over
the groups. Both are averaged over up to 8 splits. A synthetic set drawn from the real
distribution scores about the floor (ratio ~ 1); the ratio says how many times farther it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, stats

from cellsynth_cli import io
from cellsynth_cli.defaults import SEED
from cellsynth_cli.errors import InputError
from cellsynth_cli.measure.detect import Detections, Detector, choose_detector
from cellsynth_cli.measure.metrics import bhattacharyya_distance, histogram, kl_divergence

FEATURES = ("intensity", "gradient", "texture")
BINS = 128
INTENSITY_RANGE = (-0.25, 1.25)  # the [0, 1] scale of the real set, with room either side
GRADIENT_SIGMA = 1.0
TEXTURE_WINDOW = 5
FEATURE_PERCENTILE = 99.5  # gradient/texture bins span 0 .. 1.5 x this percentile of real
SAMPLES_PER_VOLUME = 200_000  # values per volume kept to set the scale and the bins
MAX_SPLITS = 8  # splits of the real set averaged for the floor
METHOD_VOLUMES = 3  # real volumes the nucleus detector is chosen on
DENSITY_PSEUDO_COUNT = 0.5  # keeps |ln density ratio| finite when a side finds no nucleus
DISTANCES = (
    *(f"{f}_{d}" for f in FEATURES for d in ("kld", "bhattacharyya")),
    "radius_ks",
    "brightness_ks",
    "density_log_ratio",
)


@dataclass
class _Stats:
    """Histograms and nuclei of one unit (a volume or half a volume), or a sum of units."""

    hists: dict[str, np.ndarray] = field(
        default_factory=lambda: {f: np.zeros(BINS) for f in FEATURES}
    )
    radii: np.ndarray = field(default_factory=lambda: np.zeros(0))  # whole nuclei only
    brightness: np.ndarray = field(default_factory=lambda: np.zeros(0))
    count: float = 0.0  # nuclei, those cut by the border in proportion to their size
    n_voxels: int = 0

    @classmethod
    def of(
        cls,
        features: dict[str, np.ndarray],
        ranges: dict[str, tuple[float, float]],
        region: tuple[slice, ...],
        found: Detections,
        inside: np.ndarray,
    ) -> _Stats:
        return cls(
            hists={f: histogram(features[f][region], BINS, ranges[f]) for f in FEATURES},
            radii=found.equivalent_radius[inside & found.complete],
            brightness=found.brightness[inside],
            count=float(found.weights[inside].sum()),
            n_voxels=int(features["intensity"][region].size),
        )

    @classmethod
    def total(cls, units: list[_Stats]) -> _Stats:
        return cls(
            hists={f: sum((u.hists[f] for u in units), np.zeros(BINS)) for f in FEATURES},
            radii=np.concatenate([u.radii for u in units]) if units else np.zeros(0),
            brightness=np.concatenate([u.brightness for u in units]) if units else np.zeros(0),
            count=sum(u.count for u in units),
            n_voxels=sum(u.n_voxels for u in units),
        )

    def objects(self) -> dict:
        return {
            "n": round(self.count, 1),
            "radius_median": float(np.median(self.radii)) if len(self.radii) else None,
            "brightness_median": float(np.median(self.brightness))
            if len(self.brightness)
            else None,
            "per_megavoxel": 1e6 * self.count / max(self.n_voxels, 1),
        }


@dataclass
class Realism:
    """Distances synthetic vs real, each with the real set's own split-half floor."""

    scores: list[dict]  # name, value, floor, ratio
    objects: dict[str, dict]  # "pred" / "ref": n, radius_median, brightness_median, density
    n_pred: int
    n_ref: int
    scale: dict[str, float]
    split: str  # how the real set was halved
    groups: int  # synthetic groups the value is averaged over
    detector: str  # the nucleus detector used for both sets (decided on the real set)

    def to_dict(self) -> dict:
        return {
            "mode": "unpaired",
            "scores": self.scores,
            "objects": self.objects,
            "n_pred": self.n_pred,
            "n_ref": self.n_ref,
            "scale": self.scale,
            "split": self.split,
            "groups": self.groups,
            "detector": self.detector,
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


def _ks(a: np.ndarray, b: np.ndarray) -> float | None:
    """KS distance; 1 when exactly one side found no nucleus, None when neither did."""
    if len(a) == 0 and len(b) == 0:
        return None
    if len(a) == 0 or len(b) == 0:
        return 1.0
    return float(stats.ks_2samp(a, b).statistic)


def distances(reference: _Stats, candidate: _Stats) -> dict[str, float | None]:
    """Every distance of CANDIDATE from REFERENCE."""
    out: dict[str, float | None] = {}
    for name in FEATURES:
        p, q = reference.hists[name], candidate.hists[name]
        out[f"{name}_kld"] = kl_divergence(p, q)
        out[f"{name}_bhattacharyya"] = bhattacharyya_distance(p, q)
    out["radius_ks"] = _ks(reference.radii, candidate.radii)
    out["brightness_ks"] = _ks(reference.brightness, candidate.brightness)
    density = [
        (s.count + DENSITY_PSEUDO_COUNT) / max(s.n_voxels, 1) for s in (reference, candidate)
    ]
    out["density_log_ratio"] = abs(float(np.log(density[1] / density[0])))
    return out


def _halves(shape: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...], int, int]:
    """Two halves along the longest axis: (region A, region B, axis, cut)."""
    axis = int(np.argmax(shape))
    cut = shape[axis] // 2
    a = tuple(slice(0, cut) if i == axis else slice(None) for i in range(len(shape)))
    b = tuple(slice(cut, None) if i == axis else slice(None) for i in range(len(shape)))
    return a, b, axis, cut


def _units(
    volume: io.Volume,
    lo: float,
    hi: float,
    ranges: dict[str, tuple[float, float]],
    split: bool,
    where: str,
    detector: Detector,
) -> list[_Stats]:
    """The statistics of one volume: as one unit, or as its two halves (split)."""
    from cellsynth_cli.io.intensity import to_unit

    unit = to_unit(volume.image, lo, hi, clip=False)
    if not np.isfinite(unit).all():
        raise InputError(f"{where}: image contains NaN or infinite values")
    features = feature_maps(unit)
    found = detector.detect(np.clip(unit, 0, 1), volume.voxel_size)
    if not split:
        whole = tuple(slice(None) for _ in unit.shape)
        return [_Stats.of(features, ranges, whole, found, np.ones(len(found), bool))]
    a, b, axis, cut = _halves(unit.shape)
    in_a = found.centres[:, axis] < cut
    return [
        _Stats.of(features, ranges, a, found, in_a),
        _Stats.of(features, ranges, b, found, ~in_a),
    ]


def compare_sets(
    pred_dir: Path,
    ref_dir: Path,
    seed: int = SEED,
    on_volume: Callable[[str], None] | None = None,
) -> Realism:
    """Distances between the synthetic set PRED_DIR and the real set REF_DIR, with floors."""
    from cellsynth_cli.io.intensity import HIGH_PERCENTILE, LOW_PERCENTILE, to_unit

    rng = np.random.default_rng(seed)
    # pass 1: the real set's intensity scale (robust percentiles, as training uses)
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
    # pass 3: statistics per unit; one real volume is halved, and then so is every synthetic
    # one, so that the floor and the value compare equal amounts of data
    split = len(samples) == 1
    units: dict[str, list[_Stats]] = {"real": [], "synthetic": []}
    # one nucleus detector for both sets, chosen on (the first few volumes of) the real one
    chosen_on = [v for v, _ in zip(_images(ref_dir, "real"), range(METHOD_VOLUMES), strict=False)]
    detector, _ = choose_detector(
        [np.clip(to_unit(v.image, lo, hi), 0, 1) for v in chosen_on],
        [v.voxel_size for v in chosen_on],
    )
    for role, directory in (("real", ref_dir), ("synthetic", pred_dir)):
        for volume in _images(directory, role):
            where = f"{directory}/{volume.name}"
            units[role].extend(_units(volume, lo, hi, ranges, split, where, detector))
            if on_volume:
                on_volume(volume.name)
    real, synthetic = units["real"], units["synthetic"]
    splits = _splits(len(real), rng)
    size = len(splits[0][1])
    order = rng.permutation(len(synthetic))
    groups = [order[i : i + size] for i in range(0, len(order) - size + 1, size)] or [order]
    synthetic_groups = [_Stats.total([synthetic[i] for i in g]) for g in groups]
    floors, values = [], []
    for a, b in splits:
        reference = _Stats.total([real[i] for i in a])
        floors.append(distances(reference, _Stats.total([real[i] for i in b])))
        values.extend(distances(reference, group) for group in synthetic_groups)
    scores = []
    for name in DISTANCES:
        value, floor = _mean(d[name] for d in values), _mean(d[name] for d in floors)
        ratio = value / floor if value is not None and floor else None
        scores.append({"name": name, "value": value, "floor": floor, "ratio": ratio})
    return Realism(
        scores=scores,
        objects={
            "pred": _Stats.total(synthetic).objects(),
            "ref": _Stats.total(real).objects(),
        },
        n_pred=len(synthetic) // (2 if split else 1),
        n_ref=len(samples),
        scale={"low": lo, "high": hi},
        split=f"{len(splits)} splits of the "
        + ("one real volume into halves" if split else "real volumes into halves"),
        groups=len(groups),
        detector=detector.method,
    )


def _mean(values: Iterator[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return float(np.mean(got)) if got else None


def _splits(n: int, rng: np.random.Generator) -> list[tuple[list[int], list[int]]]:
    """Ordered splits (A, B) of n real units into halves, |B| = n // 2: all of them when
    there are few, else MAX_SPLITS random ones. Averaging over splits steadies the floor."""
    from itertools import combinations
    from math import comb

    if n < 2:
        raise InputError("the real set needs at least one volume of 2+ voxels along an axis")
    everything = set(range(n))
    if comb(n, n // 2) <= MAX_SPLITS:
        chosen = [list(b) for b in combinations(range(n), n // 2)]
    else:
        chosen = []
        seen: set[tuple[int, ...]] = set()
        while len(chosen) < MAX_SPLITS:
            b = tuple(sorted(rng.choice(n, n // 2, replace=False).tolist()))
            if b not in seen:
                seen.add(b)
                chosen.append(list(b))
    return [(sorted(everything - set(b)), b) for b in chosen]


def write_realism_csv(realism: Realism, path: Path, overwrite: bool = False) -> Path:
    """One row per distance: name, value, floor, ratio (empty where not defined)."""
    import csv

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.6g}"

    with io.atomic_file(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["distance", "value", "floor", "ratio"])
        for row in realism.scores:
            writer.writerow(
                [row["name"], cell(row["value"]), cell(row["floor"]), cell(row["ratio"])]
            )
    return Path(path)
