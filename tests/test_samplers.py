"""Reverse-process samplers (ddpm, ddim, dpm++2m, dpm++2m-sde) against exact solutions.

Oracle: an eps-predictor that knows x_0 must give x_0 back. Gaussian toy: for data
x0 ~ N(mu, s^2) per pixel the optimal eps is linear in x_t and the probability-flow ODE has a
closed-form solution, so a solver's discretisation error can be measured exactly.
"""

import math

import pytest
import torch

from cellsynth_cli.diffusion.process import SAMPLERS, sample
from cellsynth_cli.diffusion.schedule import cosine_schedule

SCHED = cosine_schedule(1000)


def oracle(x0):
    """The eps-predictor that knows x_0: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""

    def eps(x, t):
        ab = SCHED.alpha_bar_at(t)
        return (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)

    return eps


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize(
    "t_start,steps",
    [(600, 1), (600, 2), (600, 3), (600, 10), (1000, 25), (300, None), (40, 40), (7, 100)],
)
def test_oracle_returns_x0(sampler, t_start, steps):
    gen = torch.Generator().manual_seed(2)
    x0 = torch.rand((1, 1, 12, 20), generator=gen, dtype=torch.float64) * 2 - 1
    out = sample(oracle(x0), torch.zeros_like(x0), t_start, SCHED, steps, sampler, gen)
    torch.testing.assert_close(out, x0, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sampler", ["dpm++2m", "dpm++2m-sde"])
def test_oracle_returns_x0_in_float32(sampler):
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand((2, 1, 16, 16), generator=gen) * 2 - 1
    out = sample(oracle(x0), torch.zeros_like(x0), 1000, SCHED, 20, sampler, gen)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)


def gaussian_toy(seed=0, shape=(1, 1, 16, 16), s_range=(0.1, 0.5)):
    """Per-pixel Gaussian data: the exact eps and the exact ODE solution from any x_t."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(shape, generator=g, dtype=torch.float64) - 0.5
    lo, hi = s_range
    s2 = (lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)) ** 2
    guide = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1

    def eps_fn(x, t):  # E[eps | x_t] = sigma / (a^2 s^2 + sigma^2) (x_t - a mu)
        ab = SCHED.alpha_bar_at(t)
        return math.sqrt(1 - ab) / (ab * s2 + 1 - ab) * (x - math.sqrt(ab) * mu)

    def x0_hat(x, t):  # E[x_0 | x_t]
        ab = SCHED.alpha_bar_at(t)
        return mu + math.sqrt(ab) * s2 / (ab * s2 + 1 - ab) * (x - math.sqrt(ab) * mu)

    def ode_solution(x_t, t):
        """The ODE from x_t to t = 1, where (x - a mu) / sqrt(a^2 s^2 + sigma^2) is constant,
        then every sampler's final step x_0 = x0_hat(x_1, 1)."""
        ab_t, ab_1 = SCHED.alpha_bar_at(t), SCHED.alpha_bar_at(1)
        scale = ((ab_1 * s2 + 1 - ab_1) / (ab_t * s2 + 1 - ab_t)).sqrt()
        x_1 = math.sqrt(ab_1) * mu + scale * (x_t - math.sqrt(ab_t) * mu)
        return x0_hat(x_1, 1)

    return eps_fn, ode_solution, guide, mu, s2


def errors_vs_exact(t_start, steps_list, samplers=("ddim", "dpm++2m")):
    eps_fn, ode_solution, guide, _, _ = gaussian_toy()
    start = {}

    def recording(x, t):
        start.setdefault("x", x.clone())
        return eps_fn(x, t)

    def run(sampler, steps):
        gen = torch.Generator().manual_seed(3)  # the same x_{t_start} for every run
        return sample(recording, guide, t_start, SCHED, steps, sampler, gen, clip=False)

    full = run("ddim", None)
    exact = ode_solution(start["x"], t_start)
    rms = lambda a: (a - exact).pow(2).mean().sqrt().item()  # noqa: E731
    errs = {(sm, k): rms(run(sm, k)) for sm in samplers for k in steps_list}
    return rms(full), exact.pow(2).mean().sqrt().item(), errs


@pytest.mark.parametrize("t_start", [300, 600, 1000])
def test_dpmpp_2m_is_closer_to_the_ode_solution_than_ddim(t_start):
    """Same network evaluations, same integer timesteps: 2M's error is a fraction of DDIM's,
    and the fraction shrinks with K (second vs first order). The reference is the exact ODE
    solution, which the every-step DDIM reproduces to < 1e-3."""
    full_ddim_err, size, errs = errors_vs_exact(t_start, (10, 20, 50))
    assert full_ddim_err < 2e-3 * size
    ratio = {k: errs["dpm++2m", k] / errs["ddim", k] for k in (10, 20, 50)}
    assert ratio[10] < 0.75, ratio
    assert ratio[20] < 0.5, ratio
    assert ratio[50] < 0.25, ratio


@pytest.mark.parametrize("s", [0.3, 0.5])
def test_dpmpp_2m_sde_samples_the_data_distribution(s):
    """From pure noise (t_start = T) with the exact eps, 20 steps of the SDE sampler give
    pixels with the data's mean and std (up to the final denoising at t = 1)."""
    shape = (1, 1, 200, 200)
    mu = 0.1
    s2 = torch.full(shape, s * s, dtype=torch.float64)

    def eps_fn(x, t):
        ab = SCHED.alpha_bar_at(t)
        return math.sqrt(1 - ab) / (ab * s2 + 1 - ab) * (x - math.sqrt(ab) * mu)

    guide = torch.zeros(shape, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    out = sample(eps_fn, guide, 1000, SCHED, 20, "dpm++2m-sde", gen, clip=False)
    ab_1 = SCHED.alpha_bar_at(1)
    std = math.sqrt(ab_1 * s**4 / (ab_1 * s**2 + 1 - ab_1))  # std of x0_hat(x_1, 1)
    assert out.mean().item() == pytest.approx(mu, abs=0.02 * s)
    assert out.std().item() == pytest.approx(std, rel=0.05)


@pytest.mark.parametrize("clip", [False, True])
def test_multistep_samplers_with_three_timesteps_are_ddim_and_ddpm(clip):
    """First-order steps out of t_start and into t_1: with 3 timesteps dpm++2m is DDIM
    (which keeps the unclipped eps, so only without clipping) and dpm++2m-sde is the
    respaced DDPM step for step, noise for noise."""
    eps_fn, _, guide, _, _ = gaussian_toy()

    def run(sampler):
        gen = torch.Generator().manual_seed(4)
        return sample(eps_fn, guide, 600, SCHED, 3, sampler, gen, clip=clip)

    torch.testing.assert_close(run("dpm++2m-sde"), run("ddpm"), atol=1e-12, rtol=0)
    if not clip:
        torch.testing.assert_close(run("dpm++2m"), run("ddim"), atol=1e-12, rtol=0)
    # from 4 timesteps on the second-order correction changes the result
    gen = torch.Generator().manual_seed(4)
    two_m = sample(eps_fn, guide, 600, SCHED, 4, "dpm++2m", gen, clip=clip)
    ddim = sample(eps_fn, guide, 600, SCHED, 4, "ddim", torch.Generator().manual_seed(4), clip=clip)
    assert (two_m - ddim).abs().max() > 1e-3


def test_dpmpp_2m_sde_seeds():
    eps_fn, _, guide, _, _ = gaussian_toy()

    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return sample(eps_fn, guide, 600, SCHED, 10, "dpm++2m-sde", gen)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2
    assert torch.isfinite(a).all()


def test_dpmpp_2m_is_deterministic_given_the_start():
    """The ODE sampler draws only the forward noise: a seed fixes the result."""
    eps_fn, _, guide, _, _ = gaussian_toy()
    a = sample(eps_fn, guide, 600, SCHED, 10, "dpm++2m", torch.Generator().manual_seed(7))
    b = sample(eps_fn, guide, 600, SCHED, 10, "dpm++2m", torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_unknown_sampler_raises():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="unknown sampler 'dpm\\+\\+3m'"):
        sample(oracle(x), x, 10, SCHED, 5, "dpm++3m")
