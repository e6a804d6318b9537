"""The denoising UNet: shapes, time conditioning, config round trip, input checks, training."""

import json

import pytest
import torch

from cellsynth_cli.diffusion.unet import UNet, UNetConfig, default_config


def tiny(dims: int, **kw) -> UNetConfig:
    base = dict(dims=dims, channels=(4, 8, 8), time_dim=16, emb_dim=16, norm_groups=2)
    base.update(kw)
    return UNetConfig(**base)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("dims,spatial", [(2, (16, 24)), (3, (8, 16, 12))])
def test_output_shape_matches_input(dims, spatial):
    torch.manual_seed(0)
    model = UNet(tiny(dims))
    x = torch.randn(3, 1, *spatial)
    y = model(x, torch.tensor([1, 500, 999]))
    assert y.shape == x.shape
    assert y.is_contiguous()
    assert model.multiples == (4,) * dims


def test_default_param_counts_in_paper_ballpark():
    p2 = n_params(UNet(default_config(2)))
    p3 = n_params(UNet(default_config(3)))
    assert 0.6e6 < p2 < 1.5e6  # paper: ~0.9 M
    assert 1.5e6 < p3 < 3.5e6  # paper: ~2.3 M
    assert default_config(2).channels == (16, 32, 64, 128)


def test_final_conv_zero_init_and_time_matters_after_a_step():
    torch.manual_seed(0)
    model = UNet(tiny(2))
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([10, 10])
    assert torch.count_nonzero(model(x, t)) == 0  # zero-initialised output layer
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = torch.nn.functional.mse_loss(model(x, t), torch.randn(2, 1, 16, 16))
    loss.backward()
    opt.step()
    with torch.no_grad():
        a = model(x, torch.tensor([10, 10]))
        b = model(x, torch.tensor([900, 900]))
        c = model(x, torch.tensor([10.0, 10.0]))  # float timesteps are fine too
    assert (a - b).abs().max() > 1e-4
    torch.testing.assert_close(a, c)


@pytest.mark.parametrize("dims", [2, 3])
def test_config_round_trip_gives_identical_outputs(dims):
    torch.manual_seed(0)
    cfg = tiny(dims, blocks_per_level=2, mid_blocks=0, out_channels=2)
    model = UNet(cfg)
    with torch.no_grad():
        model.outc.weight.normal_()  # non-trivial output
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["channels"] == [4, 8, 8]
    cfg2 = UNetConfig.from_dict(d)
    assert cfg2 == cfg
    model2 = UNet(cfg2)
    model2.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, *([8] * dims))
    t = torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), model2(x, t), rtol=0, atol=0)


def test_wrong_dims_and_sizes_raise_clear_errors():
    m2, m3 = UNet(tiny(2)), UNet(tiny(3))
    t = torch.tensor([5])
    with pytest.raises(ValueError, match="this is a 2D model; got a 3D input"):
        m2(torch.randn(1, 1, 8, 8, 8), t)
    with pytest.raises(ValueError, match="this is a 3D model; got a 2D input"):
        m3(torch.randn(1, 1, 8, 8), t)
    with pytest.raises(ValueError, match=r"not a multiple of \(4, 4\)"):
        m2(torch.randn(1, 1, 8, 10), t)
    with pytest.raises(ValueError, match="input channel"):
        m2(torch.randn(1, 2, 8, 8), t)
    with pytest.raises(ValueError, match="t must have shape"):
        m2(torch.randn(2, 1, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="dims must be 2 or 3"):
        UNetConfig(dims=4)


@pytest.mark.parametrize("dims", [2, 3])
def test_tiny_model_overfits_a_fixed_pair(dims, margin):
    torch.manual_seed(0)
    model = UNet(tiny(dims))
    x = torch.randn(2, 1, *([8] * dims))
    t = torch.tensor([100, 600])
    target = torch.randn_like(x)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x, t), target)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    margin("loss after 60 steps / first", loss.item() / first, below=0.1)


@pytest.mark.kernels  # batch 1 and batch 2 take different convolution kernels
@pytest.mark.parametrize("dims", [2, 3])
def test_batch_one_matches_batched_forward(dims):
    # batch 1 takes the routed oneDNN path for small convs and folds the time FiLM into
    # GroupNorm's affine; every sample must agree with the batched (multiply-add) forward
    torch.manual_seed(0)
    model = UNet(tiny(dims))
    with torch.no_grad():
        model.outc.weight.normal_()
        for norm in model.modules():
            if isinstance(norm, torch.nn.GroupNorm):
                norm.weight.normal_(1.0, 0.2)
                norm.bias.normal_(0.0, 0.2)
        x = torch.randn(2, 1, *(8,) * dims)
        t = torch.tensor([4, 40])
        both = model(x, t)
        ones = [model(x[i : i + 1], t[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(torch.cat(ones), both, rtol=1e-4, atol=1e-5)


def test_bf16_network_is_a_copy_close_to_fp32(margin):
    from cellsynth_cli.ddpm.synthesize import network_in

    torch.manual_seed(0)
    model = UNet(tiny(3))
    with torch.no_grad():
        model.outc.weight.normal_()
        x = torch.randn(1, 1, 8, 16, 16)
        t = torch.tensor([30])
        exact = model(x, t)
        half = network_in(model, "bf16")(x, t)
    assert half.dtype == torch.float32 and all(p.dtype == torch.float32 for p in model.parameters())
    assert not torch.equal(half, exact)  # really computed in bf16
    margin("bf16 - fp32, relative norm", ((half - exact).norm() / exact.norm()).item(), below=0.03)
    assert network_in(model, "fp32") is model


@pytest.mark.parametrize(
    "voxel_size,factors,multiples",
    [
        (None, None, (8, 8, 8)),
        ((1.0, 1.0, 1.0), None, (8, 8, 8)),
        ((2.0, 1.0, 1.0), ((1, 2, 2), (2, 2, 2), (2, 2, 2)), (4, 8, 8)),
        ((1.0, 0.09, 0.09), ((1, 2, 2), (1, 2, 2), (1, 2, 2)), (1, 8, 8)),  # C. elegans
    ],
)
def test_anisotropic_voxels_keep_z_in_the_first_levels(voxel_size, factors, multiples):
    config = default_config(3, voxel_size)
    assert config.down_factors == factors and config.multiples == multiples
    assert UNetConfig.from_dict(config.to_dict()) == config  # travels in checkpoints


def test_anisotropic_unet_runs_on_an_unpadded_z():
    torch.manual_seed(0)
    config = UNetConfig(dims=3, channels=(4, 8, 8), down_factors=((1, 2, 2), (1, 2, 2)))
    model = UNet(config)
    x = torch.randn(2, 1, 5, 16, 12)  # z = 5: no z down-sampling, so no padding needed
    assert model(x, torch.tensor([3, 700])).shape == x.shape
    with pytest.raises(ValueError, match="down_factors"):
        UNetConfig(dims=3, channels=(4, 8), down_factors=((1, 3, 2),))


def test_old_checkpoint_configs_without_factors_still_load():
    saved = default_config(3).to_dict()
    saved.pop("down_factors")
    assert UNetConfig.from_dict(saved).multiples == (8, 8, 8)
