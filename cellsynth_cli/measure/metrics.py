"""Image similarity (PSNR, SSIM, MAE) and histogram distances (KLD, Bhattacharyya).

SSIM follows Wang et al. 2004 as scikit-image computes it with `gaussian_weights=True,
sigma=1.5, use_sample_covariance=False`: Gaussian window (truncate 3.5, so 11 voxels wide),
K1 = 0.01, K2 = 0.03, reflect padding, mean over the map with a border of 5 voxels cropped.
In 3D the window is a true 3D Gaussian. Volumes are processed in z slabs with a halo of the
window radius, so memory stays bounded and results equal the whole-volume computation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from cellsynth_cli.errors import InputError

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5, as scipy.ndimage computes it
K1, K2 = 0.01, 0.03
SLAB_VOXELS = 8_000_000  # voxels per slab (~64 MB per float64 temporary)

HIST_EPS = 1e-10  # probability added to every bin before normalising: empty bins stay finite


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise InputError(f"shapes differ: {pred.shape} vs {ref.shape}")
    if not (np.isfinite(pred).all() and np.isfinite(ref).all()):
        raise InputError("images contain NaN or infinite values")


def mse(pred: np.ndarray, ref: np.ndarray) -> float:
    _check_pair(pred, ref)
    diff = pred.astype(np.float64) - ref.astype(np.float64)
    return float(np.mean(diff * diff))


def mae(pred: np.ndarray, ref: np.ndarray) -> float:
    _check_pair(pred, ref)
    return float(np.mean(np.abs(pred.astype(np.float64) - ref.astype(np.float64))))


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    """10 log10(data_range^2 / MSE); inf for identical images."""
    if data_range <= 0:
        raise InputError(f"data range must be positive, got {data_range}")
    error = mse(pred, ref)
    return float("inf") if error == 0 else float(10 * np.log10(data_range**2 / error))


def _ssim_map(x: np.ndarray, y: np.ndarray, data_range: float) -> np.ndarray:
    def blur(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, SSIM_SIGMA, truncate=SSIM_TRUNCATE, mode="reflect")

    ux, uy = blur(x), blur(y)
    vx = blur(x * x) - ux * ux
    vy = blur(y * y) - uy * uy
    vxy = blur(x * y) - ux * uy
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    return ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))


def ssim(pred: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    """Mean SSIM (2D, or true 3D for volumes), computed slab by slab along the first axis."""
    _check_pair(pred, ref)
    if data_range <= 0:
        raise InputError(f"data range must be positive, got {data_range}")
    r = SSIM_RADIUS
    if min(pred.shape) < 2 * r + 1:
        raise InputError(
            f"SSIM needs at least {2 * r + 1} voxels along every axis, got {pred.shape}"
        )
    n0 = pred.shape[0]
    plane = int(np.prod(pred.shape[1:]))
    slab = max(1, SLAB_VOXELS // plane)
    total, count = 0.0, 0
    # the cropped region (border r removed), in slabs along axis 0 with a halo of r
    for start in range(r, n0 - r, slab):
        stop = min(start + slab, n0 - r)
        lo, hi = max(0, start - r), min(n0, stop + r)
        x = pred[lo:hi].astype(np.float64)
        y = ref[lo:hi].astype(np.float64)
        # rows of [start, stop) are >= r from a slab cut, so their Gaussian windows see only
        # real data; at the true volume ends the slab reflects exactly like the whole volume
        s = _ssim_map(x, y, data_range)
        inner = (slice(start - lo, stop - lo),) + tuple(slice(r, n - r) for n in pred.shape[1:])
        total += float(s[inner].sum(dtype=np.float64))
        count += s[inner].size
    return total / count


def histogram(values: np.ndarray, bins: int, value_range: tuple[float, float]) -> np.ndarray:
    """Counts on fixed bins; values outside the range land in the end bins."""
    clipped = np.clip(values.ravel(), value_range[0], value_range[1])
    counts, _ = np.histogram(clipped, bins=bins, range=value_range)
    return counts.astype(np.float64)


def _probabilities(counts: np.ndarray) -> np.ndarray:
    p = counts / max(counts.sum(), 1.0) + HIST_EPS
    return p / p.sum()


def kl_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """KL(P || Q) = sum p log(p / q) of two histograms on the same bins (nats)."""
    p, q = _probabilities(p_counts), _probabilities(q_counts)
    return float(max(0.0, np.sum(p * np.log(p / q))))


def bhattacharyya_distance(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """-ln sum sqrt(p q) of two histograms on the same bins."""
    p, q = _probabilities(p_counts), _probabilities(q_counts)
    return float(max(0.0, -np.log(np.sum(np.sqrt(p * q)))))
