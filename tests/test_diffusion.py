"""Schedule, forward process, reverse samplers and tiling, checked against closed forms."""

import math

import numpy as np
import pytest
import torch

from cellsynth_cli.ddpm.tiling import (
    TiledPredictor,
    auto_tile,
    blend_weights,
    tile_grid,
    tile_starts,
)
from cellsynth_cli.diffusion.process import (
    q_sample,
    reverse_step,
    sample,
    sampling_timesteps,
)
from cellsynth_cli.diffusion.schedule import cosine_schedule


def test_cosine_schedule_matches_closed_form():
    sched = cosine_schedule(1000)
    f = lambda t: math.cos(((t / 1000) + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (1, 10, 250, 500, 900):
        assert sched.alpha_bar_at(t) == pytest.approx(f(t) / f(0), rel=1e-9)
    assert sched.alpha_bar_at(0) == 1.0
    assert sched.betas.max() <= 0.999 and sched.betas.min() > 0
    assert np.all(np.diff(sched.alpha_bar) < 0)
    np.testing.assert_allclose(np.cumprod(1 - sched.betas), sched.alpha_bar)


@pytest.mark.parametrize("t", [50, 400, 900])
def test_q_sample_statistics(t):
    sched = cosine_schedule(1000)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((1, 200_000), 0.7, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    xt = q_sample(x0, torch.tensor([t]), noise, sched)
    ab = sched.alpha_bar_at(t)
    assert xt.mean().item() == pytest.approx(math.sqrt(ab) * 0.7, abs=5e-3)
    assert xt.var().item() == pytest.approx(1 - ab, rel=2e-2, abs=1e-4)


def test_paper_step_is_the_respaced_step_with_s_equal_t_minus_1():
    sched = cosine_schedule(1000)
    gen = torch.Generator().manual_seed(1)
    x_t, eps, z = (torch.randn(1000, generator=gen, dtype=torch.float64) for _ in range(3))
    t = 300
    a, b, ab = sched.alphas[t - 1], sched.betas[t - 1], sched.alpha_bar_at(t)
    sigma = math.sqrt(b * (1 - sched.alpha_bar_at(t - 1)) / (1 - ab))
    paper = 1 / math.sqrt(a) * (x_t - b / math.sqrt(1 - ab) * eps) + sigma * z
    ours = reverse_step(x_t, eps, t, t - 1, sched, "ddpm", z, clip=False)
    torch.testing.assert_close(ours, paper)


def oracle(x0, sched):
    """The eps-predictor that knows x_0: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""

    def eps(x, t):
        ab = sched.alpha_bar_at(t)
        return (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)

    return eps


@pytest.mark.parametrize(
    "sampler,steps", [("ddpm", None), ("ddpm", 20), ("ddim", 20), ("ddim", None)]
)
def test_oracle_reverse_process_returns_x0(sampler, steps):
    sched = cosine_schedule(1000)
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand((1, 1, 24, 40), generator=gen, dtype=torch.float64) * 2 - 1
    guide = torch.zeros_like(x0)  # the sketch is irrelevant: the oracle knows x0
    out = sample(oracle(x0, sched), guide, 600, sched, steps, sampler, gen)
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=0)


def test_sampling_timesteps():
    assert sampling_timesteps(5, None, 1000) == [5, 4, 3, 2, 1]
    ts = sampling_timesteps(600, 50, 1000)
    assert ts[0] == 600 and ts[-1] == 1 and len(ts) == 50 and ts == sorted(ts, reverse=True)
    with pytest.raises(ValueError, match="t_start"):
        sampling_timesteps(0, None, 1000)
    with pytest.raises(ValueError, match="t_start"):
        sampling_timesteps(1001, None, 1000)


@pytest.mark.parametrize(
    "size,tile,overlap", [(100, 32, 8), (64, 64, 16), (65, 32, 31), (20, 32, 8)]
)
def test_tile_starts_cover_with_enough_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all() and starts[0] == 0
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))


@pytest.mark.parametrize(
    "shape,tile,overlap", [((70, 90), (32, 32), (8, 8)), ((20, 40, 50), (16, 32, 32), (4, 8, 8))]
)
def test_blend_weights_sum_to_one(shape, tile, overlap):
    tiles = tile_grid(shape, tile, overlap)
    total = np.zeros(shape)
    for t, w in zip(tiles, blend_weights(shape, tiles), strict=True):
        assert w.min() > 0
        total[t] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


@pytest.mark.parametrize("steps", [None, 15])
def test_tiled_oracle_sampling_returns_x0_for_any_tiling(steps):
    """Through TiledPredictor: an oracle for a constant x0 is per-voxel, so every tiling
    (tile size, overlap, batch) must return x0 and the same sample."""
    sched = cosine_schedule(1000)
    level = 0.3

    def oracle_net(x, t):
        ab = torch.tensor([sched.alpha_bar_at(int(v)) for v in t], dtype=x.dtype)
        ab = ab[:, None, None, None]
        return (x - ab.sqrt() * level) / (1 - ab).sqrt()

    results = []
    for tile, overlap, batch in (
        ((16, 16), (4, 4), 1),
        ((32, 48), (8, 16), 4),
        ((48, 72), (0, 0), 2),
    ):
        predictor = TiledPredictor(oracle_net, (48, 72), tile, overlap, batch)
        guide = torch.full((1, 1, 48, 72), -1.0, dtype=torch.float64)
        results.append(
            sample(predictor, guide, 300, sched, steps, "ddpm", torch.Generator().manual_seed(5))
        )
    for r in results:
        torch.testing.assert_close(r, torch.full_like(r, level), atol=1e-6, rtol=0)
        torch.testing.assert_close(r, results[0], atol=1e-6, rtol=0)


def test_tiled_predictor_matches_whole_image_for_pointwise_net():
    """Blending a per-voxel network's tile outputs reproduces the whole-image output exactly."""

    def net(x, t):
        return torch.tanh(x * 3) + t[:, None, None, None].to(x.dtype) / 1000

    x = torch.randn(1, 1, 50, 70, generator=torch.Generator().manual_seed(0))
    whole = net(x, torch.tensor([7]))
    for tile, overlap, batch in (
        ((16, 16), (4, 4), 3),
        ((32, 64), (8, 8), 1),
        ((50, 70), (0, 0), 2),
    ):
        tiled = TiledPredictor(net, (50, 70), tile, overlap, batch)(x, 7)
        torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "shape,overlap,budget",
    [
        ((96, 160), (8, 8), 96 * 160),  # fits: one tile
        ((512, 768), (16, 16), 64 * 64),  # 2D, far over budget
        ((2048, 48), (16, 8), 32 * 48),  # one long axis
        ((24, 200, 136), (4, 16, 16), 24 * 64 * 64),  # 3D
    ],
)
def test_auto_tile_fits_budget_and_covers(shape, overlap, budget):
    tile = auto_tile(shape, overlap, 8, budget)
    assert all(t % 8 == 0 or t == s for t, s in zip(tile, shape, strict=True))
    assert math.prod(tile) <= budget
    if math.prod(shape) <= budget:
        assert tile == shape
    covered = np.zeros(shape, dtype=int)
    for sl in tile_grid(shape, tile, overlap):
        covered[sl] += 1
    assert covered.min() >= 1
    # not needlessly small: within a factor 4 of the budget
    assert math.prod(tile) > budget / 4


def test_auto_tile_stops_at_the_smallest_sensible_tile():
    """A budget smaller than one (overlap + multiple) tile: tiles stop shrinking there."""
    tile = auto_tile((64, 64), (8, 8), 8, 10)
    assert tile == (16, 16)
