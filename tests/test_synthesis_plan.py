"""How synthesize cuts a sketch into tiles and picks its precision (no network involved)."""

import re
from types import SimpleNamespace

import pytest
import torch

from cellsynth_cli.ddpm.synthesize import (
    SynthesisOptions,
    resolve_precision,
    synthesis_plan,
    tiles_per_call,
    tiling_for,
    with_defaults,
)
from cellsynth_cli.ddpm.tiling import AUTO_TILE_VOXELS
from cellsynth_cli.errors import InputError

CPU = torch.device("cpu")


def model(dims: int = 2, patch: tuple[int, ...] = (64, 64), multiple: int = 8):
    return SimpleNamespace(dims=dims, multiples=(multiple,) * dims, config={"patch": list(patch)})


def test_default_is_one_tile_for_a_sketch_within_budget():
    padded, tile, overlap = tiling_for((70, 90), model(), SynthesisOptions())
    assert padded == (72, 96) and tile == padded
    assert overlap == (16, 16)  # a quarter of the training patch


def test_sketch_smaller_than_the_patch():
    padded, tile, overlap = tiling_for((20, 30), model(), SynthesisOptions())
    assert padded == tile == (24, 32) and overlap == (6, 8)


def test_big_sketch_gets_tiles_within_budget_and_fewer_per_call():
    m = model(3, (16, 64, 64))
    plan = synthesis_plan((64, 512, 512), m, SynthesisOptions(batch=4), CPU)
    voxels = plan["tile"][0] * plan["tile"][1] * plan["tile"][2]
    assert plan["n_tiles"] > 1 and voxels <= AUTO_TILE_VOXELS
    assert plan["tiles_per_call"] * voxels <= AUTO_TILE_VOXELS


def test_explicit_tile_keeps_batch_and_default_overlap_follows_tile():
    options = SynthesisOptions(tile=(32,), batch=3)
    padded, tile, overlap = tiling_for((70, 90), model(), options)
    assert tile == (32, 32) and overlap == (8, 8)  # min(patch, tile) // 4
    assert tiles_per_call(options, tile) == 3


@pytest.mark.parametrize(
    "options,message",
    [
        (SynthesisOptions(tile=(32, 32, 32)), "3 sizes"),
        (SynthesisOptions(tile=(30,)), "multiples of (8, 8)"),
        (SynthesisOptions(tile=(32,), overlap=(32,)), "smaller than the tile"),
        (SynthesisOptions(overlap=(-1,)), ">= 0"),
    ],
)
def test_bad_tiling_is_an_input_error(options, message):
    with pytest.raises(InputError, match=re.escape(message)):
        tiling_for((70, 90), model(), options)


def test_overlap_is_not_checked_on_an_axis_with_a_single_tile():
    # z (16 after padding) fits one tile: an overlap of 16 there is irrelevant, not an error
    m = model(3, (16, 64, 64))
    _, tile, overlap = tiling_for((10, 100, 100), m, SynthesisOptions(overlap=(16,)))
    assert tile == (16, 104, 104) and overlap == (16, 16, 16)


def test_plan_refuses_a_sketch_of_other_dimensionality():
    with pytest.raises(InputError, match="2D model"):
        synthesis_plan((8, 70, 90), model(), SynthesisOptions(), CPU)


def test_precision_choice(monkeypatch):
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"  # emulated bf16 would be slower
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16"


@pytest.mark.parametrize(
    "dims,given,expected",
    [
        (2, {}, ("ddpm", 50)),  # auto: the paper's sampler, 50 respaced steps
        (3, {}, ("dpm++2m-sde", 20)),  # auto in 3D: the measured faster sampler
        (3, {"t_start": 12}, ("dpm++2m-sde", 12)),  # below its default: every step
        (3, {"sampler": "ddpm"}, ("ddpm", 50)),  # a chosen sampler keeps its own default
        (3, {"steps": 7}, ("dpm++2m-sde", 7)),
        (3, {"steps": None}, ("ddpm", None)),  # --every-step: the paper's sampler
    ],
)
def test_sampler_and_steps_follow_the_model_unless_given(dims, given, expected):
    model = SimpleNamespace(dims=dims, config={"condition": "pseudo-sketch"})
    options = with_defaults(model, SynthesisOptions(**{"t_start": 500, **given}))
    assert (options.sampler, options.steps) == expected
    assert options.guidance == 2.0  # a conditional model is guided by default
