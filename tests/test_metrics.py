"""Metrics agree with scikit-image; histogram distances behave as distances."""

import numpy as np
import pytest
import tifffile
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from cellsynth_cli.errors import InputError
from cellsynth_cli.measure import metrics


def sk_ssim(a, b, data_range):
    return structural_similarity(
        a, b, data_range=data_range, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )


@pytest.mark.parametrize("shape", [(64, 80), (24, 40, 48)])
def test_agrees_with_skimage_on_random_images(shape):
    rng = np.random.default_rng(0)
    a = rng.random(shape)
    b = np.clip(a + rng.normal(0, 0.1, shape), 0, 1)
    assert metrics.psnr(b, a, 1.0) == pytest.approx(
        peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-4
    )
    assert metrics.ssim(b, a, 1.0) == pytest.approx(sk_ssim(a, b, 1.0), abs=1e-4)
    assert metrics.mae(b, a) == pytest.approx(np.abs(a - b).mean(), abs=1e-12)
    assert metrics.mse(b, a) == pytest.approx(mean_squared_error(a, b), abs=1e-12)


def test_agrees_with_skimage_on_the_real_image(dsb_dir):
    real = tifffile.imread(dsb_dir / "dsb2018.tif").astype(np.float64)
    blurred = np.roll(real, 2, axis=1) * 0.9 + 5
    rng = 235.0
    assert metrics.ssim(blurred, real, rng) == pytest.approx(sk_ssim(real, blurred, rng), abs=1e-4)
    assert metrics.psnr(blurred, real, rng) == pytest.approx(
        peak_signal_noise_ratio(real, blurred, data_range=rng), abs=1e-4
    )


def test_3d_ssim_in_slabs_equals_whole_volume(monkeypatch):
    rng = np.random.default_rng(1)
    a = rng.random((37, 30, 33))
    b = a * 0.8 + rng.random(a.shape) * 0.2
    whole = metrics.ssim(a, b, 1.0)
    monkeypatch.setattr(metrics, "SLAB_VOXELS", 30 * 33 * 3)  # 3 planes per slab
    assert metrics.ssim(a, b, 1.0) == pytest.approx(whole, abs=1e-12)
    assert whole == pytest.approx(sk_ssim(a, b, 1.0), abs=1e-4)


def test_identical_images():
    a = np.random.default_rng(2).random((32, 32))
    assert metrics.psnr(a, a, 1.0) == float("inf")
    assert metrics.ssim(a, a, 1.0) == pytest.approx(1.0)
    assert metrics.mae(a, a) == 0.0


def test_bad_pairs():
    with pytest.raises(InputError, match="shapes differ"):
        metrics.psnr(np.zeros((20, 20)), np.zeros((20, 21)), 1.0)
    bad = np.zeros((20, 20))
    bad[1, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        metrics.ssim(bad, np.zeros((20, 20)), 1.0)


def test_kld_and_bd_zero_for_identical_and_grow_with_separation():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, 100_000)
    h = metrics.histogram(x, 128, (-5, 5))
    assert metrics.kl_divergence(h, h) == 0.0
    assert metrics.bhattacharyya_distance(h, h) == pytest.approx(0.0, abs=1e-12)
    klds, bds = [], []
    for shift in (0.1, 0.5, 1.0, 2.0):
        g = metrics.histogram(x + shift, 128, (-5, 5))
        klds.append(metrics.kl_divergence(h, g))
        bds.append(metrics.bhattacharyya_distance(h, g))
    assert np.all(np.diff(klds) > 0) and np.all(np.diff(bds) > 0)
    # Gaussians N(0,1), N(d,1): KL = d^2/2, BD = d^2/8
    assert klds[2] == pytest.approx(0.5, rel=0.05)
    assert bds[2] == pytest.approx(1 / 8, rel=0.05)


def test_kld_finite_with_empty_bins():
    p = np.array([10.0, 0.0, 5.0])
    q = np.array([0.0, 10.0, 5.0])
    assert np.isfinite(metrics.kl_divergence(p, q)) and metrics.kl_divergence(p, q) > 1
