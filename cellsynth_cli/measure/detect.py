"""Nuclei in unlabelled images: where they are, how big and how bright, without annotations.

Used where we need object statistics without masks: size, count and brightness of the nuclei
in real images (to size simulations: `simulate fit`) and in synthetic ones (to score realism).
Aware of anisotropic voxels (a nucleus round in micrometres is round to the detector even when
z is sampled ten times more coarsely than y/x). Two ways to find the nuclei (seeds):

- "log": a multiscale Laplacian of Gaussian, one seed per blob. Best for small, evenly bright
  nuclei, and it finds dim nuclei next to bright ones; but inside large textured nuclei
  (chromatin spots) it finds the spots.
- "watershed": a local-threshold foreground, one seed per distance maximum that stands out
  (relative h-maxima), watershed (`segment_nuclei`). Best for large or textured nuclei.
- "auto" (default): "log", unless it finds more than twice as many blobs as an Otsu watershed
  finds nuclei (it is counting texture): then "watershed".

Either way each nucleus is then measured on its half-maximum region (`half_maximum_regions`):
the voxels of its watershed cell brighter than halfway from the local background to the
nucleus's own level; two touching regions with no valley between them are one nucleus (a
textured nucleus cut at its chromatin). With LoG seeds, a second look finds the dim nuclei
beside bright ones that its threshold missed (`_with_dim_nuclei`). Sizes are that region's
equal-area (2D) / equal-volume (3D) radius (a blurred edge crosses half height where the
object ends, so blur does not bias it; LoG scales and global thresholds undersize textured
and dim nuclei), brightness its mean; regions cut by the image border count in proportion
to their size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cellsynth_cli.errors import InputError

METHODS = ("auto", "log", "watershed")
# in-plane radius in voxels, small nuclei to mouse-stem size; the smallest scale only guards:
# blobs are reported from the second scale on (radius ~3.3 px)
DEFAULT_RADIUS_RANGE = (2.5, 48.0)
DEFAULT_THRESHOLD = 0.05  # scale-normalised LoG response on the [0, 1] intensity scale
N_SCALES = 14
MIN_SIGMA = 0.5  # voxels: below this an axis (a coarse z) is not smoothed further
BRIGHTNESS_WINDOW = 5  # voxels (in-plane) averaged around a centre for its brightness
SMOOTHING = 1.0  # in-plane voxels of Gaussian smoothing before the watershed's threshold
SEED_PROMINENCE = 0.25  # a distance maximum is a seed when 25 % higher than its saddle
HALF_MAXIMUM = 0.5  # a nucleus ends where it is this far from local background to its level
BACKGROUND_SCALE = 30.0  # in-plane voxels of smoothing of the background map (illumination)
CELL_NOISE = 2.0  # noise levels above the background that a watershed cell may span
LOG_SEED_FRACTION = 0.5  # a LoG nucleus's level is taken within this fraction of its radius
AUTO_TEXTURE_RATIO = 2.0  # auto: LoG blobs per watershed nucleus above which LoG sees texture
# two touching regions are one nucleus when the boundary between them is brighter than this
# times the dimmer one's level: no valley, a textured nucleus cut at a chromatin spot (BBBC007:
# 1.20x -> 1.10x the labels' count; 0.9 merged touching DSB nuclei, 1.05 none)
NO_VALLEY = 1.05
# Dim nuclei the LoG seeds missed (several times dimmer than their neighbours, under LoG's
# absolute threshold): looked for again once the nuclei found are taken out, by a LoG at the
# typical radius on what is left above the background. A candidate counts when its response
# stands DIM_SIGNIFICANCE robust spreads above that of the empty background, its centre lies
# DIM_CLEARANCE typical radii clear of every nucleus found (nearer, a bright nucleus's glow
# peaks), its half-maximum region holds DIM_SIZE (low, high) times a typical nucleus's area
# (volume) and its level above the background is DIM_CONTRAST of the found nuclei's median.
# On the bench (docs/experiments.md) it found 6 of the 13 nuclei the seeds missed in the
# dimmed DSB image (and one object outside the labels); on BBBC007 10 outside the 661 labels
# (specks; at 0.05 contrast 20, at 0.1 six but it then misses nuclei 10x dimmer).
DIM_SIGNIFICANCE = 4.0
DIM_CLEARANCE = 1.0
DIM_SIZE = (0.15, 4.0)
DIM_CONTRAST = 0.08
# The fixed pixel settings above suit nuclei of ~10 px radius (the bundled DSB image): nuclei
# whose typical inscribed radius is over RESCALE_ABOVE px are found on the image shrunk
# in-plane until it is CANONICAL_RADIUS, where chromatin grain and nucleoli fall below the
# detector's scales, and measured on the image itself (a 2.5x magnified, textured DSB image:
# 3.9x too many nuclei at 0.30x their radius without it, 0.93x at 1.04x with it; simulated
# nucleolated nuclei of radius ~30 px, four seeds: 0.96-1.08x the count at 7 px, 1.12-1.38x
# at 10, neighbours merged at 5; docs/experiments.md). The bundled stack's nuclei (inscribed
# 20 px) are not shrunk: at 18 px they were, and its fit moved (z extent, brightness top).
CANONICAL_RADIUS = 7.0
RESCALE_ABOVE = 25.0
SCALE_SMOOTHING = 2.0  # in-plane voxels: the first foreground the scale is measured on


@dataclass
class Detections:
    """Nuclei found in one image: centres and per-axis radii in voxels, brightness on [0, 1].

    weights: how much each counts as a nucleus (1, less for a region cut by the border);
    complete: whether its size is measured whole (not cut by the image border).
    """

    centres: np.ndarray  # (n, ndim)
    radii: np.ndarray  # (n, ndim)
    brightness: np.ndarray  # (n,)
    shape: tuple[int, ...]
    axis_scale: tuple[float, ...]  # in-plane voxels -> voxels of each axis
    method: str = "log"
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    complete: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def __post_init__(self) -> None:
        n = len(self.centres)
        if len(self.weights) != n:
            self.weights = np.ones(n)
        if len(self.complete) != n:
            self.complete = np.ones(n, bool)

    @property
    def equivalent_radius(self) -> np.ndarray:
        """Radius of the ball with the same volume (area in 2D), in in-plane voxels."""
        if len(self.radii) == 0:
            return np.zeros(0)
        in_plane = self.radii / np.asarray(self.axis_scale)
        return np.exp(np.mean(np.log(in_plane), axis=1))

    @property
    def volume(self) -> float:
        """The nuclei's summed volume (area in 2D) in voxels, from their semi-axes."""
        unit_ball = np.pi if len(self.shape) == 2 else 4.0 / 3.0 * np.pi
        return float(unit_ball * np.sum(np.prod(self.radii, axis=1)))

    @property
    def count(self) -> float:
        """Nuclei counted (regions cut by the border in proportion to their size)."""
        return float(np.sum(self.weights))

    def __len__(self) -> int:
        return len(self.centres)


def _axis_scale(voxel_size: tuple[float, ...] | None, ndim: int) -> np.ndarray:
    """Per-axis factor from in-plane voxels to this axis's voxels (1 for y/x)."""
    if voxel_size is None or len(voxel_size) != ndim:
        return np.ones(ndim)
    vs = np.asarray(voxel_size, dtype=float)
    return vs[-1] / vs


class FirstPass:
    """One image's two first detections, each made once when first asked for: "auto" weighs
    them against each other and the chosen detector then starts from its own (in 3D each
    takes seconds; on the bundled stack the Otsu watershed ran twice before)."""

    def __init__(
        self,
        image: np.ndarray,
        voxel_size: tuple[float, ...] | None = None,
        radius_range: tuple[float, float] = DEFAULT_RADIUS_RANGE,
    ) -> None:
        self.image = _checked(image)
        self.voxel_size = voxel_size
        self.radius_range = radius_range

    @functools.cached_property
    def blobs(self) -> Detections:
        return log_blobs(self.image, self.voxel_size, self.radius_range)

    @functools.cached_property
    def regions(self) -> Detections:
        return watershed_nuclei(self.image, self.voxel_size)


def detect_nuclei(
    image: np.ndarray,
    voxel_size: tuple[float, ...] | None = None,
    method: str = "auto",
    radius_range: tuple[float, float] = DEFAULT_RADIUS_RANGE,
    shrink: float = 1.0,
) -> Detections:
    """Nuclei in IMAGE (already on a [0, 1] scale, background low): seeds by METHOD (see
    above), each measured on its half-maximum region; found on the image SHRINK times smaller
    in-plane (detection_scale) and measured on IMAGE."""
    _check_method(method)
    image = _checked(image)
    first = FirstPass(*shrunk(image, voxel_size, shrink), radius_range)
    return detect_in(first, method, image, voxel_size)


def detect_in(
    first: FirstPass,
    method: str = "auto",
    image: np.ndarray | None = None,
    voxel_size: tuple[float, ...] | None = None,
) -> Detections:
    """detect_nuclei on an image whose first pass a caller holds (it chose the method on it).
    IMAGE, VOXEL_SIZE: the full-size image FIRST was shrunk from, where the regions found
    are measured (sizes, brightness); by default FIRST's own."""
    regions, method = nucleus_regions(first, method, None if image is None else image.shape)
    if image is None:
        image, voxel_size = first.image, first.voxel_size
    return region_detections(image, regions, voxel_size, method)


def nucleus_regions(
    first: FirstPass, method: str = "auto", shape: tuple[int, ...] | None = None
) -> tuple[np.ndarray, str]:
    """(instance labels, the method used): each nucleus's half-maximum region (see above) in
    the image FIRST was made from, stretched to SHAPE where FIRST's image was shrunk."""
    _check_method(method)
    if method == "auto":
        method = choose_method([first])
    if method == "log":
        seeds = _log_seeds(first)
    else:
        radius = _typical_radius(first.regions)
        seeds = segment_nuclei(first.image, first.voxel_size, threshold="local", radius=radius)
    regions = half_maximum_regions(first.image, first.voxel_size, seeds)
    regions = _joined_without_valley(first.image, first.voxel_size, regions)
    if method == "log":  # the watershed's local foreground keeps dim nuclei already
        regions = _with_dim_nuclei(first.image, first.voxel_size, regions)
    return _resized(regions, shape or first.image.shape), method


def _joined_without_valley(
    image: np.ndarray, voxel_size: tuple[float, ...] | None, regions: np.ndarray, after: int = 0
) -> np.ndarray:
    """REGIONS with each pair that touches without a valley between them (NO_VALLEY) joined:
    above the background, the mean of the smoothed image across their shared boundary against
    the dimmer one's median level. AFTER: only pairs with a region numbered above it."""
    index = np.arange(1, int(regions.max()) + 1)
    if len(index) < 2:
        return regions
    scale = _axis_scale(voxel_size, image.ndim)
    smooth = ndimage.gaussian_filter(image, np.maximum(SMOOTHING * scale, 0.3))
    contrast = smooth - _background(smooth, regions == 0, scale)
    level = np.concatenate([[np.inf], ndimage.median(contrast, regions, index)])
    first, second, value = [], [], []
    for axis in range(regions.ndim):
        n = regions.shape[axis] - 1
        a, b = (np.take(regions, range(k, n + k), axis) for k in (0, 1))
        c_a, c_b = (np.take(contrast, range(k, n + k), axis) for k in (0, 1))
        touch = (a > 0) & (b > 0) & (a != b)
        first.append(np.minimum(a, b)[touch])
        second.append(np.maximum(a, b)[touch])
        value.append((c_a[touch] + c_b[touch]) / 2)
    first, second, value = (np.concatenate(v) for v in (first, second, value))
    if len(first) == 0:
        return regions
    pairs, inverse = np.unique(np.stack([first, second], axis=1), axis=0, return_inverse=True)
    boundary = np.bincount(inverse.ravel(), value) / np.bincount(inverse.ravel())
    no_valley = boundary >= NO_VALLEY * np.minimum(level[pairs[:, 0]], level[pairs[:, 1]])
    joined = pairs[no_valley & (pairs[:, 1] > after)]
    graph = coo_matrix((np.ones(len(joined)), (joined[:, 0], joined[:, 1])), (len(level),) * 2)
    _, nucleus = connected_components(graph, directed=False)
    nucleus = np.where(np.arange(len(level)) == 0, -1, nucleus) + 1  # background stays 0
    return nucleus[regions].astype(np.int32)


def _with_dim_nuclei(
    image: np.ndarray, voxel_size: tuple[float, ...] | None, regions: np.ndarray
) -> np.ndarray:
    """REGIONS and, numbered after them, the dim nuclei they missed (see DIM_SIGNIFICANCE)."""
    n = int(regions.max())
    if n == 0:
        return regions
    scale = _axis_scale(voxel_size, image.ndim)
    volume = np.bincount(regions.ravel())[1:] / float(np.prod(scale))
    typical = float(np.median(volume[volume > 0]))  # in in-plane voxels
    radius = float(_ball_radius(typical, image.ndim))
    smooth = ndimage.gaussian_filter(image, np.maximum(SMOOTHING * scale, 0.3))
    centres = _dim_candidates(smooth, regions, scale, radius)
    if len(centres) == 0:
        return regions
    marks = np.zeros(image.shape, np.int32)
    marks[tuple(centres.T)] = np.arange(n + 1, n + len(centres) + 1)
    distance, nearest = ndimage.distance_transform_edt(
        marks == 0, sampling=1.0 / scale, return_indices=True
    )
    ball = (distance <= radius / 2) & (regions == 0)
    seeds = np.where(ball, marks[tuple(nearest)], regions)
    # sized on the image smoothed at a quarter radius: a dim nucleus is near the noise level
    calm = ndimage.gaussian_filter(image, np.maximum(radius / 4 * scale, 0.3))
    grown = half_maximum_regions(calm, voxel_size, seeds)
    dim = _plausible(np.where(grown > n, grown, 0), smooth, regions, scale, n, typical)
    # a candidate with no valley between it and a nucleus found is the rest of that nucleus
    return _joined_without_valley(image, voxel_size, np.where(regions > 0, regions, dim), n)


def _dim_candidates(
    smooth: np.ndarray, regions: np.ndarray, scale: np.ndarray, radius: float
) -> np.ndarray:
    """Centres (n, ndim) of the LoG peaks at RADIUS on SMOOTH above its background, the
    nuclei found (REGIONS) taken out, that stand out (DIM_SIGNIFICANCE, DIM_CLEARANCE)."""
    clearance = ndimage.distance_transform_edt(regions == 0, sampling=1.0 / scale)
    near = clearance <= radius / 2
    residual = np.where(near, 0.0, smooth - _background(smooth, ~near, scale))
    sigma = np.maximum(radius / np.sqrt(smooth.ndim) * scale, MIN_SIGMA)
    response = _log_response(residual.astype(np.float32), sigma)
    empty = response[clearance > 1.5 * radius]
    if empty.size == 0:
        return np.zeros((0, smooth.ndim), int)
    middle = float(np.median(empty))
    spread = 1.4826 * float(np.median(np.abs(empty - middle)))
    window = [max(3, int(2 * round(radius * s) + 1)) for s in scale]
    peaks = (
        (response >= ndimage.maximum_filter(response, size=window))
        & (response > middle + DIM_SIGNIFICANCE * spread)
        & (clearance >= DIM_CLEARANCE * radius)
    )
    candidates, found = ndimage.label(peaks)
    if found == 0:
        return np.zeros((0, smooth.ndim), int)
    return np.rint(ndimage.center_of_mass(peaks, candidates, range(1, found + 1))).astype(int)


def _plausible(
    dim: np.ndarray,
    smooth: np.ndarray,
    regions: np.ndarray,
    scale: np.ndarray,
    n: int,
    typical_volume: float,
) -> np.ndarray:
    """DIM's regions (labelled after N) of a nucleus's size (DIM_SIZE times TYPICAL_VOLUME, in
    in-plane voxels) and contrast (DIM_CONTRAST against REGIONS' median), renumbered N+1, ..."""
    index = np.arange(n + 1, int(dim.max()) + 1)
    if len(index) == 0:
        return dim
    contrast = smooth - _background(smooth, (regions == 0) & (dim == 0), scale)
    typical = float(np.median(ndimage.median(contrast, regions, np.arange(1, n + 1))))
    level = np.asarray(ndimage.median(contrast, dim, index))
    volume = ndimage.sum_labels(np.ones(dim.shape), dim, index) / float(np.prod(scale))
    keep = (volume >= DIM_SIZE[0] * typical_volume) & (volume <= DIM_SIZE[1] * typical_volume)
    keep &= level >= DIM_CONTRAST * typical
    number = np.zeros(int(dim.max()) + 1, np.int32)
    number[index[keep]] = np.arange(n + 1, n + 1 + int(keep.sum()))
    return number[dim]


def _ball_radius(volume, ndim: int):
    """Radius of the disc (2D) / ball (3D) of VOLUME (a number or an array)."""
    return np.sqrt(volume / np.pi) if ndim == 2 else np.cbrt(3.0 * volume / (4.0 * np.pi))


def _resized(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """LABELS stretched to SHAPE (nearest voxel): regions found on a shrunk image, at full size."""
    if labels.shape == tuple(shape):
        return labels
    index = np.ix_(*(np.arange(n) * m // n for n, m in zip(shape, labels.shape, strict=True)))
    return labels[index]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise InputError(f"nucleus detection method must be one of {', '.join(METHODS)}")


def _typical_radius(regions: Detections) -> float:
    """Median equal-volume radius of the Otsu watershed's nuclei (sizes the local window)."""
    return float(np.median(regions.equivalent_radius)) if len(regions) else 8.0


def _log_seeds(first: FirstPass) -> np.ndarray:
    """Labels: each LoG blob's part of the local-threshold foreground (a watershed of the
    smoothed image from the blob centres), or, for a blob dimmer than that foreground, a
    ball of LOG_SEED_FRACTION of its radius around its centre (dim nuclei count too)."""
    from skimage.segmentation import watershed

    image, blobs = first.image, first.blobs
    markers = np.zeros(image.shape, np.int32)
    if not len(blobs):
        return markers
    markers[tuple(blobs.centres.T)] = np.arange(1, len(blobs) + 1)
    scale = np.asarray(blobs.axis_scale)
    distance = ndimage.distance_transform_edt(markers == 0, sampling=1.0 / scale)
    smooth = ndimage.gaussian_filter(image, np.maximum(SMOOTHING * scale, 0.3))
    radius = float(np.median(blobs.equivalent_radius))
    near_centre = distance <= LOG_SEED_FRACTION * radius
    foreground = _foreground(image, smooth, scale, "local", radius)
    return watershed(-smooth, markers, mask=foreground | near_centre).astype(np.int32)


def _checked(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim not in (2, 3):
        raise InputError(f"nucleus detection needs a 2D or 3D image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise InputError("nucleus detection: the image contains NaN or infinite values")
    return image


def log_blobs(
    image: np.ndarray,
    voxel_size: tuple[float, ...] | None = None,
    radius_range: tuple[float, float] = DEFAULT_RADIUS_RANGE,
    threshold: float = DEFAULT_THRESHOLD,
) -> Detections:
    """Bright blobs in IMAGE (on a [0, 1] scale) by a multiscale LoG.

    A multiscale scale-normalised Laplacian of Gaussian: at each in-plane scale s the image
    is smoothed with sigma_i = s * (in-plane voxel / axis voxel) per axis and the response is
    -sum_i sigma_i^2 d2/dx_i^2. Weighting each axis by its own sigma^2 (rather than one
    mean sigma, as skimage's blob_log does) keeps a coarse z axis from turning noise into
    thousands of blobs. Blobs are local maxima over space and scale above `threshold`; the
    radius (sigma * sqrt(ndim)) is refined between scales by a parabola in log scale, and of
    two blobs whose centres lie inside each other the weaker is dropped.
    radius_range is the in-plane radius in voxels.
    """
    image = _checked(image)
    lo, hi = radius_range
    if not 0 < lo < hi:
        raise InputError(f"radius range must satisfy 0 < low < high, got {radius_range}")
    ndim = image.ndim
    scale = _axis_scale(voxel_size, ndim)
    root = np.sqrt(ndim)
    scales = np.geomspace(lo / root, hi / root, N_SCALES)  # in-plane sigma per scale
    step = np.log(scales[1] / scales[0])

    # a sliding window of three scales keeps memory at a few copies of the image
    maps: dict[int, np.ndarray] = {}
    local_max: dict[int, np.ndarray] = {}
    found_at, found_scale, found_value = [], [], []
    for k in range(N_SCALES):
        for j in (k, k + 1):
            if j < N_SCALES and j not in maps:
                maps[j] = _log_response(image, np.maximum(scales[j] * scale, MIN_SIGMA))
                local_max[j] = ndimage.maximum_filter(maps[j], size=3, mode="nearest")
        here = maps[k]
        if k == 0:  # a maximum at the smallest scale is unresolved (noise peaks live there)
            continue
        peak = (here >= local_max[k]) & (here > threshold)
        for j in (k - 1, k + 1):
            if j in local_max:
                peak &= here >= local_max[j]
        idx = np.nonzero(peak)
        if len(idx[0]):
            values = here[idx]
            found_at.append(np.stack(idx, axis=1))
            found_scale.append(np.log(scales[k]) + _scale_offset(maps, k, idx, values) * step)
            found_value.append(values)
        maps.pop(k - 1, None)
        local_max.pop(k - 1, None)
    if found_at:
        centres = np.concatenate(found_at)
        radii_inplane = np.exp(np.concatenate(found_scale)) * root
        strength = np.concatenate(found_value)
        keep = _drop_nested(centres, radii_inplane, strength, scale)
        centres, radii_inplane = centres[keep], radii_inplane[keep]
    else:
        centres, radii_inplane = np.zeros((0, ndim), int), np.zeros(0)
    window = [max(1, int(round(BRIGHTNESS_WINDOW * s))) for s in scale]
    local_mean = ndimage.uniform_filter(image, size=window, mode="reflect")
    brightness = local_mean[tuple(centres.T)] if len(centres) else np.zeros(0)
    return Detections(
        centres=centres,
        radii=radii_inplane[:, None] * scale[None, :],
        brightness=np.asarray(brightness, dtype=float),
        shape=tuple(image.shape),
        axis_scale=tuple(float(v) for v in scale),
        method="log",
    )


def _log_response(image: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """-sum_i sigma_i^2 d2/dx_i^2 of IMAGE smoothed by SIGMA (per axis): the scale-normalised
    Laplacian of Gaussian, bright blobs positive."""
    smooth = ndimage.gaussian_filter(image, sigma, mode="reflect")
    out = np.zeros_like(smooth)
    for axis in range(image.ndim):
        d2 = ndimage.correlate1d(smooth, [1.0, -2.0, 1.0], axis=axis, mode="reflect")
        out -= (sigma[axis] ** 2) * d2
    return out


def _scale_offset(maps: dict, k: int, idx: tuple, values: np.ndarray) -> np.ndarray:
    """Where between the neighbouring scales the peaks at scale K lie (a parabola through the
    three responses), in steps of the scale grid, within +-0.5."""
    below = maps[k - 1][idx] if k - 1 in maps else values
    above = maps[k + 1][idx] if k + 1 in maps else values
    curvature = below - 2 * values + above
    offset = np.where(curvature < 0, 0.5 * (below - above) / np.minimum(curvature, -1e-12), 0)
    return np.clip(offset, -0.5, 0.5)


def segment_nuclei(
    image: np.ndarray,
    voxel_size: tuple[float, ...] | None = None,
    threshold: str = "otsu",
    radius: float | None = None,
) -> np.ndarray:
    """Instance labels of the nuclei in IMAGE (on a [0, 1] scale): a foreground of the
    smoothed image (holes filled per slice), relative h-maxima of its distance transform as
    seeds, watershed. Distances are physical (in in-plane voxels).

    threshold "otsu": one global Otsu threshold (misses nuclei dimmer than it).
    "local": above the mean of a window of ~4 nucleus radii (RADIUS in in-plane voxels, by
    default the median of detect_nuclei's) plus the noise level, and above half the Otsu
    threshold: keeps dim nuclei beside bright ones (on the bundled DSB image: F1@0.5 0.92
    against its real masks, Otsu 0.72).
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    image = _checked(image)
    scale = _axis_scale(voxel_size, image.ndim)
    sigma = np.maximum(SMOOTHING * scale, 0.3)
    smooth = ndimage.gaussian_filter(image, sigma)
    if float(smooth.max()) <= float(smooth.min()):
        return np.zeros(image.shape, np.int32)
    if threshold == "local" and radius is None:
        found = detect_nuclei(image, voxel_size)
        radius = float(np.median(found.equivalent_radius)) if len(found) else 8.0
    foreground = _foreground(image, smooth, scale, threshold, radius)
    distance = ndimage.gaussian_filter(
        ndimage.distance_transform_edt(foreground, sampling=1.0 / scale), sigma
    )
    # relative h-maxima: h on log(distance) is a fraction of each maximum's own height
    log_distance = np.log(np.maximum(distance, 1e-3))
    seeds = h_maxima(log_distance, np.log1p(SEED_PROMINENCE)) & (
        distance >= DEFAULT_RADIUS_RANGE[0]
    )
    markers, _ = ndimage.label(seeds)
    return watershed(-distance, markers, mask=foreground).astype(np.int32)


def _foreground(
    image: np.ndarray,
    smooth: np.ndarray,
    scale: np.ndarray,
    threshold: str,
    radius: float | None,
) -> np.ndarray:
    """Foreground of SMOOTH (see segment_nuclei's THRESHOLD), holes filled per slice."""
    from skimage.filters import threshold_local, threshold_otsu

    otsu = threshold_otsu(smooth)
    if threshold == "local":
        block = [int(2 * round(max(2.0 * radius * s, 1.0)) + 1) for s in scale]
        local = threshold_local(smooth, block, offset=-_noise_level(image))
        foreground = (smooth > local) & (smooth > 0.5 * otsu)
    elif threshold == "otsu":
        foreground = smooth > otsu
    else:
        raise ValueError(f"threshold must be otsu or local, got {threshold!r}")
    return _holes_filled(foreground)


def _holes_filled(foreground: np.ndarray) -> np.ndarray:
    """FOREGROUND with its holes filled, slice by slice in 3D."""
    if foreground.ndim == 3:
        return np.stack([ndimage.binary_fill_holes(plane) for plane in foreground])
    return ndimage.binary_fill_holes(foreground)


def watershed_nuclei(image: np.ndarray, voxel_size: tuple[float, ...] | None = None) -> Detections:
    """Detections of the regions of `segment_nuclei` (Otsu threshold): the count the "auto"
    rule weighs LoG's blobs against."""
    image = _checked(image)
    return region_detections(image, segment_nuclei(image, voxel_size), voxel_size, "watershed")


def half_maximum_regions(
    image: np.ndarray, voxel_size: tuple[float, ...] | None, seeds: np.ndarray
) -> np.ndarray:
    """Labels: each seed region of SEEDS grown to its nucleus's half-maximum region.

    The background is a smooth map of the image away from the seeds (uneven illumination);
    a watershed of the smoothed image from the seeds, over the voxels clearly above it,
    gives each nucleus its cell (neighbours never merge); in its cell a nucleus keeps the
    voxels above background + HALF_MAXIMUM * (its level - background), its level being the
    median of its seed region (robust to chromatin spots and dark nucleoli).
    """
    from skimage.segmentation import watershed

    n = int(seeds.max())
    if n == 0:
        return seeds
    scale = _axis_scale(voxel_size, image.ndim)
    smooth = ndimage.gaussian_filter(image, np.maximum(SMOOTHING * scale, 0.3))
    background = _background(smooth, seeds == 0, scale)
    above = smooth > background + CELL_NOISE * _noise_level(image)
    cells = watershed(-smooth, np.where(above, seeds, 0), mask=above | (seeds > 0))
    index = np.arange(1, n + 1)
    level = np.asarray(ndimage.median(smooth, seeds, index))
    with np.errstate(invalid="ignore"):  # a seed without a cell: 0 / 0, replaced below
        base = np.asarray(ndimage.mean(background, cells, index))
    base = np.where(np.isfinite(base), base, level)  # a seed without a cell keeps none
    cut = np.concatenate([[np.inf], base + HALF_MAXIMUM * (level - base)])
    return np.where((cells > 0) & (smooth > cut[cells]), cells, 0).astype(np.int32)


def _background(smooth: np.ndarray, away: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """A smooth map of SMOOTH from its AWAY voxels only (uneven illumination, not nuclei)."""
    wide = BACKGROUND_SCALE * scale
    return ndimage.gaussian_filter(np.where(away, smooth, 0), wide) / np.maximum(
        ndimage.gaussian_filter(away.astype(np.float32), wide), 1e-3
    )


def _noise_level(image: np.ndarray) -> float:
    """Noise sigma: robust spread of neighbour differences along x (sqrt 2 sigma)."""
    diff = np.diff(image, axis=-1)
    return 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / np.sqrt(2.0)


def region_detections(
    image: np.ndarray,
    labels: np.ndarray,
    voxel_size: tuple[float, ...] | None,
    method: str,
) -> Detections:
    """Detections of the regions in LABELS: centroids, mean brightness, and per-axis
    semi-axes from each region's second moments (a uniform ellipsoid has variance a^2 / 5
    along a 3D axis, a^2 / 4 in 2D), scaled so that their product gives the region's volume.

    Regions touching the border are incomplete (their size is not measured whole) and count
    in proportion to their size, relative to the median complete region. The z faces count
    as border only in stacks deeper than two typical diameters: in a thin stack every nucleus
    touches them.
    """
    ndim = image.ndim
    scale = _axis_scale(voxel_size, ndim)
    index = np.arange(1, int(labels.max()) + 1)
    ones = np.ones(labels.shape, np.float32)
    size = ndimage.sum_labels(ones, labels, index)
    index, size = index[size > 0], size[size > 0]
    axis_scale = tuple(float(v) for v in scale)
    if len(index) == 0:
        empty = np.zeros((0, ndim))
        return Detections(
            empty.astype(int), empty, np.zeros(0), tuple(image.shape), axis_scale, method
        )
    radius = _ball_radius(size / float(np.prod(scale)), ndim)
    centre = np.asarray(ndimage.center_of_mass(ones, labels, index))
    # per-axis spread in in-plane voxels -> semi-axes, normalised to the equal-volume radius
    semi = np.empty((len(index), ndim))
    for axis in range(ndim):
        coords = np.indices(labels.shape, sparse=True)[axis] / scale[axis]
        coords = np.broadcast_to(coords, labels.shape)
        mean_sq = ndimage.mean(coords * coords, labels, index)
        # + a voxel's own variance (h^2 / 12): a ball a few coarse z slices deep is round
        voxel_variance = (1.0 / scale[axis]) ** 2 / 12.0
        variance = np.maximum(mean_sq - (centre[:, axis] / scale[axis]) ** 2, 0) + voxel_variance
        semi[:, axis] = np.sqrt((ndim + 2) * variance)
    semi *= (radius / np.exp(np.mean(np.log(semi), axis=1)))[:, None]
    brightness = np.asarray(ndimage.mean(image, labels, index), dtype=float)
    typical = float(np.median(radius))
    edge = np.zeros(labels.shape, bool)
    edge[..., 0, :] = edge[..., -1, :] = edge[..., :, 0] = edge[..., :, -1] = True
    if ndim == 3 and labels.shape[0] / scale[0] > 4 * typical:
        edge[0] = edge[-1] = True
    complete = ~np.isin(index, np.unique(labels[edge]))
    typical = np.median(radius[complete]) if complete.any() else typical
    weights = np.where(complete, 1.0, np.minimum(1.0, (radius / typical) ** ndim))
    return Detections(
        centres=np.rint(centre).astype(int),
        radii=semi * scale[None, :],
        brightness=brightness,
        shape=tuple(image.shape),
        axis_scale=axis_scale,
        method=method,
        weights=weights,
        complete=complete,
    )


def inscribed_radius(image: np.ndarray, voxel_size: tuple[float, ...] | None = None) -> float:
    """The typical nucleus's inscribed radius in in-plane voxels, blind to texture: the
    area-weighted median of the largest inscribed ball of each component of an Otsu
    foreground (holes filled), measured twice, the second time on the image smoothed at a
    third of the first estimate (so chromatin and nucleoli no longer fragment it)."""
    image = _checked(image)
    scale = _axis_scale(voxel_size, image.ndim)
    radius = _inscribed(image, scale, SCALE_SMOOTHING)
    return _inscribed(image, scale, max(SCALE_SMOOTHING, radius / 3))


def _inscribed(image: np.ndarray, scale: np.ndarray, sigma: float) -> float:
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(image, np.maximum(sigma * scale, 0.3))
    if float(smooth.max()) <= float(smooth.min()):
        return CANONICAL_RADIUS
    foreground = _holes_filled(smooth > threshold_otsu(smooth))
    labels, n = ndimage.label(foreground)
    if n == 0:
        return CANONICAL_RADIUS
    index = np.arange(1, n + 1)
    distance = ndimage.distance_transform_edt(foreground, sampling=1.0 / scale)
    peaks = np.asarray(ndimage.maximum(distance, labels, index))
    areas = np.asarray(ndimage.sum_labels(np.ones(labels.shape), labels, index))
    order = np.argsort(peaks)
    share = np.cumsum(areas[order]) / areas.sum()
    return float(peaks[order][np.searchsorted(share, 0.5)])


def bright_foreground(
    image: np.ndarray, voxel_size: tuple[float, ...] | None, radius: float
) -> np.ndarray:
    """The voxels of IMAGE above one Otsu threshold once smoothed at a quarter of the typical
    nucleus RADIUS (in-plane voxels; texture and noise smoothed away), holes filled: what the
    nuclei found, or segmented, should make up (dim nuclei under the threshold aside)."""
    from skimage.filters import threshold_otsu

    image = _checked(image)
    scale = _axis_scale(voxel_size, image.ndim)
    smooth = ndimage.gaussian_filter(image, np.maximum(radius / 4 * scale, 0.3))
    if float(smooth.max()) <= float(smooth.min()):
        return np.zeros(image.shape, bool)
    return _holes_filled(smooth > threshold_otsu(smooth))


def detection_scale(
    images: list[np.ndarray], voxel_sizes: list, radius: float | None = None
) -> float:
    """How much to shrink a set's images in-plane before detection (1: not at all), from the
    typical nucleus RADIUS in in-plane voxels (by default their measured inscribed radius)."""
    if radius is None:
        pairs = zip(images, voxel_sizes, strict=True)
        radius = float(np.median([inscribed_radius(im, vs) for im, vs in pairs]))
    return radius / CANONICAL_RADIUS if radius > RESCALE_ABOVE else 1.0


def shrunk(
    image: np.ndarray, voxel_size: tuple[float, ...] | None, factor: float
) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """IMAGE FACTOR times smaller in-plane (smoothed first against aliasing), and the voxel
    size that goes with it."""
    if factor == 1.0:
        return image, voxel_size
    plane = (1.0,) * (image.ndim - 2)
    smooth = ndimage.gaussian_filter(image, (0.0,) * len(plane) + (factor / 2,) * 2)
    small = ndimage.zoom(smooth, plane + (1 / factor,) * 2, order=1)
    voxel_size = voxel_size or (1.0,) * image.ndim  # the shrunk axes are coarser than z now
    grow = [a / b for a, b in zip(image.shape, small.shape, strict=True)]
    return small, tuple(float(v * g) for v, g in zip(voxel_size, grow, strict=True))


def choose_method(images: list[FirstPass]) -> str:
    """The "auto" choice for a set of images: "log", unless over all of them LoG finds more
    than AUTO_TEXTURE_RATIO times as many blobs as the watershed finds nuclei."""
    blobs = sum(len(first.blobs) for first in images)
    regions = sum(first.regions.count for first in images)
    return "watershed" if blobs > AUTO_TEXTURE_RATIO * max(regions, 1.0) else "log"


@dataclass(frozen=True)
class Detector:
    """How a set's nuclei are found, chosen once on (some of) its images and used for each:
    the seed method and how much the images are shrunk in-plane first (detection_scale)."""

    method: str
    shrink: float = 1.0

    def detect(self, image: np.ndarray, voxel_size=None, **kwargs) -> Detections:
        return detect_nuclei(image, voxel_size, self.method, shrink=self.shrink, **kwargs)


def choose_detector(
    images: list[np.ndarray], voxel_sizes: list, radius: float | None = None
) -> tuple[Detector, list[FirstPass]]:
    """The detector for a set of IMAGES (on a [0, 1] scale) and each image's first pass (on
    the shrunk image; a caller detecting on these same images starts from them). RADIUS: the
    typical nucleus radius in in-plane voxels, if the measured one is wrong."""
    shrink = detection_scale(images, voxel_sizes, radius)
    passes = [
        FirstPass(*shrunk(_checked(im), vs, shrink))
        for im, vs in zip(images, voxel_sizes, strict=True)
    ]
    return Detector(choose_method(passes), shrink), passes


def _drop_nested(
    centres: np.ndarray, radii: np.ndarray, strength: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """Indices of blobs kept: strongest first, dropping any blob whose centre lies within the
    radius of a kept one or holds a kept one's centre within its own radius."""
    from scipy.spatial import cKDTree

    points = centres / scale  # in in-plane voxels, so distances are physical
    tree = cKDTree(points)
    order = np.argsort(-strength)
    dropped = np.zeros(len(centres), bool)
    keep = []
    for i in order:
        if dropped[i]:
            continue
        keep.append(i)
        near = tree.query_ball_point(points[i], radii.max())
        for j in near:
            if j != i and np.linalg.norm(points[j] - points[i]) < max(radii[i], radii[j]):
                dropped[j] = True
    return np.sort(np.asarray(keep, dtype=int))
