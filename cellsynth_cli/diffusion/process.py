"""Forward process q(x_t | x_0), the training loss and the reverse process.

Timesteps follow the paper: t = 1..T, x_0 is the clean image; the network sees t as is.
A reverse step goes from t to any s < t: s = t - 1 is the paper's step, larger jumps give the
respaced DDPM (Nichol & Dhariwal 2021) or DDIM (Song et al. 2021) with fewer network calls.
dpm++2m and dpm++2m-sde are the second-order multistep DPM-Solver++(2M) (Lu et al. 2022) and
its SDE variant (as k-diffusion's sample_dpmpp_2m_sde, eta = 1, midpoint) on the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from cellsynth_cli.diffusion.conditioning import drop_condition, network_input
from cellsynth_cli.diffusion.schedule import Schedule

EpsFn = Callable[[torch.Tensor, int], torch.Tensor]  # (x_t, t) -> predicted noise
SAMPLERS = ("ddpm", "ddim", "dpm++2m", "dpm++2m-sde")
MULTISTEP = ("dpm++2m", "dpm++2m-sde")  # second order: they keep the previous x0_hat


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape((-1,) + (1,) * (like.ndim - 1)).to(like.dtype)


def alpha_bar_tensor(schedule: Schedule, t: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t for a tensor of t in 0..T (alpha_bar_0 = 1)."""
    table = torch.from_numpy(np.concatenate([[1.0], schedule.alpha_bar]))
    return table.to(t.device)[t.long()]  # indexed on the device: no device-to-host sync


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: Schedule
) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (closed form of the forward)."""
    ab = _bcast(alpha_bar_tensor(schedule, t), x0)
    return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise


def training_loss(
    model: torch.nn.Module,
    x0: torch.Tensor,
    schedule: Schedule,
    generator: torch.Generator,
    condition: torch.Tensor | None = None,
    condition_dropout: float = 0.0,
) -> torch.Tensor:
    """MSE between the true noise and the predicted noise at uniformly random t in 1..T.

    condition: the sketches of a conditional model (an extra input channel), each replaced
    by the null sketch with probability condition_dropout (conditioning.py).
    """
    b = x0.shape[0]
    t = torch.randint(1, schedule.T + 1, (b,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = q_sample(x0, t, noise, schedule)
    if condition is not None:
        condition = drop_condition(condition, condition_dropout, generator)
    return torch.nn.functional.mse_loss(model(network_input(x_t, condition), t), noise)


def sampling_timesteps(t_start: int, steps: int | None, T: int) -> list[int]:  # noqa: N803
    """Descending timesteps t_start = t_K > ... > t_1 >= 1 visited by the reverse process.

    steps None or >= t_start: every step (the paper's sampler). Otherwise K evenly spaced
    steps from t_start down to 1.
    """
    if not 1 <= t_start <= T:
        raise ValueError(f"t_start must be in 1..{T}, got {t_start}")
    if steps is None or steps >= t_start:
        return list(range(t_start, 0, -1))
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ts = np.round(np.linspace(t_start, 1, steps)).astype(int)
    return sorted(set(ts.tolist()), reverse=True)


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, ab_t: float) -> torch.Tensor:
    return (x_t - (1.0 - ab_t) ** 0.5 * eps) / ab_t**0.5


def reverse_step(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    t: int,
    s: int,
    schedule: Schedule,
    sampler: str,
    noise: torch.Tensor | None,
    clip: bool = True,
) -> torch.Tensor:
    """One step t -> s < t.

    ddpm: x_s ~ q(x_s | x_t, x0_hat) with the posterior variance (beta~; 0 at the last step,
    so an exact eps returns x_0 exactly). For s = t-1 and no clipping this is the paper's
    x_{t-1} = 1/sqrt(a_t) (x_t - b_t / sqrt(1-ab_t) eps) + sigma_t z.
    ddim: deterministic, x_s = sqrt(ab_s) x0_hat + sqrt(1-ab_s) eps (eta = 0).
    clip: keep x0_hat in the data range [-1, 1] (improved-diffusion's clip_denoised).
    """
    ab_t, ab_s = schedule.alpha_bar_at(t), schedule.alpha_bar_at(s)
    x0 = predict_x0(x_t, eps, ab_t)
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    if sampler == "ddim":
        return ab_s**0.5 * x0 + (1.0 - ab_s) ** 0.5 * eps
    alpha = ab_t / ab_s  # the effective alpha of the (possibly respaced) step
    beta = 1.0 - alpha
    mean = (ab_s**0.5 * beta / (1.0 - ab_t)) * x0 + (alpha**0.5 * (1.0 - ab_s) / (1.0 - ab_t)) * x_t
    variance = beta * (1.0 - ab_s) / (1.0 - ab_t)
    if variance <= 0.0 or noise is None:
        return mean
    return mean + variance**0.5 * noise


def log_snr(schedule: Schedule, t: int) -> float:
    """lambda_t = log(alpha_t / sigma_t) = log(sqrt(ab_t) / sqrt(1 - ab_t)); +inf at t = 0."""
    ab = schedule.alpha_bar_at(t)
    return math.inf if ab >= 1.0 else 0.5 * (math.log(ab) - math.log1p(-ab))


def dpmpp_2m_step(
    x_t: torch.Tensor,
    x0: torch.Tensor,
    t: int,
    s: int,
    schedule: Schedule,
    previous: tuple[torch.Tensor, float] | None,
    noise: torch.Tensor | None,
) -> tuple[torch.Tensor, float]:
    """One DPM-Solver++(2M) step t -> s < t from the data prediction x0 = x0_hat(x_t, t).

    With alpha = sqrt(ab), sigma = sqrt(1 - ab), lambda = log(alpha / sigma), h = lambda_s -
    lambda_t and previous = (x0_hat at the previous step, its h) or None (first step):
      D = x0 + (h / (2 h_prev)) (x0 - x0_prev)   (D = x0 on the first step: first order)
      ode (noise None): x_s = sigma_s / sigma_t x_t + alpha_s (1 - e^-h) D
      sde:              x_s = sigma_s / sigma_t e^-h x_t + alpha_s (1 - e^-2h) D
                              + sigma_s sqrt(1 - e^-2h) z
    Without clipping the first ode step is DDIM's and the first sde step is the respaced DDPM
    posterior step. s = 0 (sigma = 0, lambda = +inf): x_0 = x0, the DDIM / DDPM final step.
    Returns x_s and h, to pass on as previous = (x0, h).
    """
    if s == 0:
        return x0, math.inf
    ab_t, ab_s = schedule.alpha_bar_at(t), schedule.alpha_bar_at(s)
    h = log_snr(schedule, s) - log_snr(schedule, t)
    d = x0 if previous is None else x0 + (h / (2.0 * previous[1])) * (x0 - previous[0])
    ratio = ((1.0 - ab_s) / (1.0 - ab_t)) ** 0.5  # sigma_s / sigma_t
    if noise is None:
        return ratio * x_t + (ab_s**0.5 * -math.expm1(-h)) * d, h
    one_minus = -math.expm1(-2.0 * h)  # 1 - e^-2h
    x_s = (ratio * math.exp(-h)) * x_t + (ab_s**0.5 * one_minus) * d
    return x_s + ((1.0 - ab_s) * one_minus) ** 0.5 * noise, h


def sample(
    eps_fn: EpsFn,
    x0_guide: torch.Tensor,
    t_start: int,
    schedule: Schedule,
    steps: int | None = None,
    sampler: str = "ddpm",
    generator: torch.Generator | None = None,
    on_step: Callable[[int], None] | None = None,
    clip: bool = True,
) -> torch.Tensor:
    """SDEdit: noise the guide (a sketch in [-1, 1]) to t_start, then reverse to 0.

    sampler: ddpm / ddim (reverse_step) or dpm++2m / dpm++2m-sde (dpmpp_2m_step) over
    sampling_timesteps(t_start, steps, T), then 0; every sampler evaluates eps_fn once per
    timestep. The multistep samplers take first-order steps out of t_start and into the last
    timestep, so with <= 3 timesteps dpm++2m is DDIM (without clipping) and dpm++2m-sde is
    the respaced DDPM. Noise is drawn on the CPU from `generator` and moved to the guide's
    device, so a seed gives the same noise on any device.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    generator = generator or torch.Generator().manual_seed(0)

    def randn() -> torch.Tensor:
        return torch.randn(x0_guide.shape, generator=generator).to(x0_guide.device, x0_guide.dtype)

    timesteps = sampling_timesteps(t_start, steps, schedule.T)
    t0 = torch.full((x0_guide.shape[0],), t_start, dtype=torch.long)
    x = q_sample(x0_guide, t0.to(x0_guide.device), randn(), schedule)
    previous = None  # multistep samplers: (x0_hat, h) of the previous step
    for i, t in enumerate(timesteps):
        s = timesteps[i + 1] if i + 1 < len(timesteps) else 0
        eps = eps_fn(x, t)
        noise = randn() if sampler in ("ddpm", "dpm++2m-sde") and s > 0 else None
        if sampler in MULTISTEP:
            x0 = predict_x0(x, eps, schedule.alpha_bar_at(t))
            if clip:
                x0 = x0.clamp(-1.0, 1.0)
            # first order into t_1 (the DPM-Solver reference code's lower_order_final): on
            # these integer steps that jump spans 1.6-5x the lambda of the step before it
            # (cosine schedule), and the 2M extrapolation overshoots there
            last = s == timesteps[-1]
            x, h = dpmpp_2m_step(x, x0, t, s, schedule, None if last else previous, noise)
            previous = (x0, h)
        else:
            x = reverse_step(x, eps, t, s, schedule, sampler, noise, clip)
        if on_step:
            on_step(t)
    return x
