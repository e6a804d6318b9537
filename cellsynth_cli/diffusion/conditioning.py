"""Sketch conditioning: the network sees the sketch as a second input channel.

A conditional DDPM learns eps(x_t, t | sketch) from pairs (real image, sketch of it): a
pseudo-sketch made without annotations (pseudo_sketch.py), or a label-sketch drawn from the
image's own masks (real annotations, or a segmenter's masks of it: the round-2 generator of
self-training). During training the sketch is replaced by
NULL_CONDITION with probability `dropout`, so the same network also learns the unconditional
eps(x_t, t); at synthesis classifier-free guidance mixes the two:

    eps = eps_uncond + w (eps_cond - eps_uncond)

w = 1 is the conditional prediction (one network call), w = 0 the unconditional one, w > 1
follows the sketch more strongly (two calls per step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CONDITIONS = ("none", "pseudo-sketch", "label-sketch")
# The null sketch: a constant mid-grey (0 in the model's [-1, 1]); real sketches have a
# background of -1, so the network can tell "no sketch" from "an empty sketch".
NULL_CONDITION = 0.0

Net = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def is_conditional(config: dict) -> bool:
    """Whether a checkpoint's training config asks for a sketch."""
    return config.get("condition", "none") != "none"


def network_input(x_t: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
    """x_t, or x_t and its sketch stacked as channels."""
    return x_t if condition is None else torch.cat([x_t, condition.to(x_t.dtype)], dim=1)


def drop_condition(
    condition: torch.Tensor, probability: float, generator: torch.Generator
) -> torch.Tensor:
    """The batch's sketches, each replaced by the null sketch with the given probability."""
    if probability <= 0.0:
        return condition
    dropped = torch.rand(condition.shape[0], generator=generator) < probability
    keep = (~dropped).to(condition.device, condition.dtype)
    keep = keep.reshape((-1,) + (1,) * (condition.ndim - 1))
    return condition * keep + NULL_CONDITION * (1.0 - keep)


def guided(net: Net, guidance: float) -> Net:
    """net(x_and_sketch, t) -> the guided eps; x_and_sketch is (B, 2, ...) [x_t, sketch]."""

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 1.0:
            return net(x, t)
        null = torch.cat([x[:, :1], torch.full_like(x[:, 1:], NULL_CONDITION)], dim=1)
        if guidance == 0.0:
            return net(null, t)
        if x.device.type == "cpu":
            # two calls: on a CPU one batch of both costs 2.7x a call for a full-size 3D tile
            # (memory-bound; bench_synthesis_3d), two calls cost 2x
            cond, uncond = net(x, t), net(null, t)
        else:  # a GPU computes both in one batch for little more than one
            cond, uncond = net(torch.cat([x, null]), torch.cat([t, t])).chunk(2)
        return uncond + guidance * (cond - uncond)

    return eps
