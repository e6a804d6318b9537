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

DEFAULT_RADIUS_RANGE = (3.0, 40.0)  # in-plane radius in voxels: small nuclei to mouse-stem size
DEFAULT_THRESHOLD = 0.05  # scale-normalised LoG response on the [0, 1] intensity scale
N_SCALES = 12
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

    radius_range is the in-plane radius in voxels; a blob of LoG scale sigma has radius
    sigma * sqrt(ndim). Scales are spaced logarithmically.
    """
    from skimage.feature import blob_log

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
    # sigmas below half a voxel along an axis (coarse z) mean "no smoothing" there
    min_sigma = np.maximum(lo / root * scale, 0.5)
    max_sigma = np.maximum(hi / root * scale, 0.5)
    blobs = blob_log(
        image,
        min_sigma=tuple(min_sigma),
        max_sigma=tuple(max_sigma),
        num_sigma=N_SCALES,
        threshold=threshold,
        log_scale=True,
        exclude_border=False,
    )
    centres = blobs[:, :ndim].astype(int) if len(blobs) else np.zeros((0, ndim), int)
    sigmas = blobs[:, ndim:] if len(blobs) else np.zeros((0, ndim))
    if sigmas.shape[1] == 1:  # isotropic: one sigma column
        sigmas = np.repeat(sigmas, ndim, axis=1)
    radii = sigmas * root
    window = [max(1, int(round(BRIGHTNESS_WINDOW * s))) for s in scale]
    local_mean = ndimage.uniform_filter(image, size=window, mode="reflect")
    brightness = local_mean[tuple(centres.T)] if len(centres) else np.zeros(0)
    return Detections(
        centres=centres,
        radii=radii,
        brightness=np.asarray(brightness, dtype=float),
        shape=tuple(image.shape),
        axis_scale=tuple(float(v) for v in scale),
    )
