"""Nuclei in unlabelled images: a multiscale Laplacian-of-Gaussian blob detector.

Used where we need object statistics without annotations: size, count and brightness of the
nuclei in real images (to size simulations) and in synthetic ones (to score realism).
In 3D the Gaussian scales follow the voxel size, so a nucleus that is round in micrometres
is round to the detector even when z is sampled ten times more coarsely than y/x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cellsynth_cli.errors import InputError

# in-plane radius in voxels, small nuclei to mouse-stem size; the smallest scale only guards:
# blobs are reported from the second scale on (radius ~3.3 px)
DEFAULT_RADIUS_RANGE = (2.5, 48.0)
DEFAULT_THRESHOLD = 0.05  # scale-normalised LoG response on the [0, 1] intensity scale
N_SCALES = 14
MIN_SIGMA = 0.5  # voxels: below this an axis (a coarse z) is not smoothed further
BRIGHTNESS_WINDOW = 5  # voxels (in-plane) averaged around a centre for its brightness


@dataclass
class Detections:
    """Blobs found in one image: centres and per-axis radii in voxels, brightness on [0, 1]."""

    centres: np.ndarray  # (n, ndim)
    radii: np.ndarray  # (n, ndim)
    brightness: np.ndarray  # (n,)
    shape: tuple[int, ...]
    axis_scale: tuple[float, ...]  # in-plane voxels -> voxels of each axis

    @property
    def equivalent_radius(self) -> np.ndarray:
        """Radius of the ball with the same volume (area in 2D), in in-plane voxels."""
        if len(self.radii) == 0:
            return np.zeros(0)
        in_plane = self.radii / np.asarray(self.axis_scale)
        return np.exp(np.mean(np.log(in_plane), axis=1))

    def __len__(self) -> int:
        return len(self.centres)


def _axis_scale(voxel_size: tuple[float, ...] | None, ndim: int) -> np.ndarray:
    """Per-axis factor from in-plane voxels to this axis's voxels (1 for y/x)."""
    if voxel_size is None or len(voxel_size) != ndim:
        return np.ones(ndim)
    vs = np.asarray(voxel_size, dtype=float)
    return vs[-1] / vs


def detect_nuclei(
    image: np.ndarray,
    voxel_size: tuple[float, ...] | None = None,
    radius_range: tuple[float, float] = DEFAULT_RADIUS_RANGE,
    threshold: float = DEFAULT_THRESHOLD,
) -> Detections:
    """Bright blobs in IMAGE (already on a [0, 1] scale, background low).

    A multiscale scale-normalised Laplacian of Gaussian: at each in-plane scale s the image
    is smoothed with sigma_i = s * (in-plane voxel / axis voxel) per axis and the response is
    -sum_i sigma_i^2 d2/dx_i^2. Weighting each axis by its own sigma^2 (rather than one
    mean sigma, as skimage's blob_log does) keeps a coarse z axis from turning noise into
    thousands of blobs. Blobs are local maxima over space and scale above `threshold`; the
    radius (sigma * sqrt(ndim)) is refined between scales by a parabola in log scale, and of
    two blobs whose centres lie inside each other the weaker is dropped.
    radius_range is the in-plane radius in voxels.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim not in (2, 3):
        raise InputError(f"nucleus detection needs a 2D or 3D image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise InputError("nucleus detection: the image contains NaN or infinite values")
    lo, hi = radius_range
    if not 0 < lo < hi:
        raise InputError(f"radius range must satisfy 0 < low < high, got {radius_range}")
    ndim = image.ndim
    scale = _axis_scale(voxel_size, ndim)
    root = np.sqrt(ndim)
    scales = np.geomspace(lo / root, hi / root, N_SCALES)  # in-plane sigma per scale
    step = np.log(scales[1] / scales[0])

    def response(k: int) -> np.ndarray:
        sigma = np.maximum(scales[k] * scale, MIN_SIGMA)
        smooth = ndimage.gaussian_filter(image, sigma, mode="reflect")
        out = np.zeros_like(smooth)
        for axis in range(ndim):
            d2 = ndimage.correlate1d(smooth, [1.0, -2.0, 1.0], axis=axis, mode="reflect")
            out -= (sigma[axis] ** 2) * d2
        return out

    # a sliding window of three scales keeps memory at a few copies of the image
    maps: dict[int, np.ndarray] = {}
    local_max: dict[int, np.ndarray] = {}
    found_at, found_scale, found_value = [], [], []
    for k in range(N_SCALES):
        for j in (k, k + 1):
            if j < N_SCALES and j not in maps:
                maps[j] = response(j)
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
            below = maps[k - 1][idx] if k - 1 in maps else values
            above = maps[k + 1][idx] if k + 1 in maps else values
            curvature = below - 2 * values + above
            offset = np.where(
                curvature < 0, 0.5 * (below - above) / np.minimum(curvature, -1e-12), 0
            )
            found_at.append(np.stack(idx, axis=1))
            found_scale.append(np.log(scales[k]) + np.clip(offset, -0.5, 0.5) * step)
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
    )


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
