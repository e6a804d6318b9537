"""The CUDA path, checked without a GPU: the sampling loop never reads back from the device
and copies to it once per step (the noise); bf16 autocast where the GPU computes it."""

from __future__ import annotations

import pytest
import torch

from cellsynth_cli.ddpm.synthesize import native_bf16, resolve_precision
from cellsynth_cli.ddpm.tiling import TiledPredictor
from cellsynth_cli.diffusion.process import SAMPLERS, sample, sampling_timesteps
from cellsynth_cli.diffusion.schedule import make_schedule
from cellsynth_cli.diffusion.unet import UNet, UNetConfig, default_config


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampling_loop_copies_to_the_device_once_per_step_and_never_back(sampler, monkeypatch):
    # the "meta" device holds no data: any read back (.item(), .cpu(), float(), numpy) raises,
    # so a full sampling run on it proves the loop has no device-to-host transfer
    device = torch.device("meta")
    config = UNetConfig.from_dict({**default_config(2, None).to_dict(), "channels": [8, 16]})
    net = UNet(config).to(device).eval()
    predictor = TiledPredictor(lambda x, t: net(x, t), (64, 96), (32, 64), (8, 8), 4, device)
    guide = torch.zeros(1, 1, 64, 96, device=device)
    copies = []
    to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        out = to(self, *args, **kwargs)
        if self.device.type != out.device.type:
            copies.append((self.device.type, out.device.type))
        return out

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    steps, schedule = 12, make_schedule("cosine", 1000)
    with torch.inference_mode():
        x = sample(predictor, guide, 300, schedule, steps, sampler, torch.Generator(), None)
    assert x.device == device and x.shape == guide.shape
    assert all(direction == ("cpu", "meta") for direction in copies)
    n_steps = len(sampling_timesteps(300, steps, 1000))
    # per step at most the noise; before the loop the first noise, t_start and a 1001-value
    # schedule table
    assert len(copies) <= n_steps + 3


def test_bf16_autocast_on_ampere_and_newer_gpus_only(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert native_bf16(cuda) and resolve_precision("auto", cuda) == "bf16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert not native_bf16(cuda) and resolve_precision("auto", cuda) == "fp32"
    assert resolve_precision("bf16", cuda) == "bf16"  # forced stays forced
