"""Forward throughput of the denoising UNet against an fp32 matmul measured in the same run.

GFLOP of one forward come from torch.utils.flop_counter.FlopCounterMode (convolutions and
matmuls); ms per forward is the median of several timed forwards under torch.inference_mode
after warm-up. "ratio" = model GFLOP/s / matmul GFLOP/s (torch.mm 2048x2048, median).

Rows: our UNet (default 2D and 3D configs) and a reference-like UNet built the way the public
code of Eschweiler et al. builds it (conv-PReLU-InstanceNorm, 16/32/64/128 channels,
kernel-4 stride-2 downsampling, 1x1 conv + pixel/voxel shuffle, time added per level,
contiguous NC(D)HW layout), each once with glibc's default allocator behaviour and once after
``tune_cpu_allocator()`` (large buffers kept in the heap instead of being unmapped and
page-faulted in again every forward). Then our UNets again in bf16, against a bf16 matmul
(on CPUs without native bf16 both are emulated): under autocast (fp32 weights; the path
before issue 23) and as synthesize runs them (a bf16 copy of the weights, no autocast).
"ours-3d-aniso" is the 3D UNet for C. elegans voxels (z never down-sampled): more work per
voxel at the low resolutions. "ours-3d-tile" is one call of guided 3D synthesis on CPU: the
sketch-conditioned UNet on one default-size tile (batch 1, 40 x 192 x 264), the MFU that
sets the time per full-size volume.

Run standalone (``python bench/bench_unet.py``) or from bench/run.py.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import median_time, set_threads  # noqa: E402

from cellsynth_cli.ddpm.synthesize import network_in  # noqa: E402
from cellsynth_cli.diffusion.unet import (  # noqa: E402
    UNet,
    default_config,
    tune_cpu_allocator,
)

# Batch sizes typical for tiled sampling: a few tiles of the paper's patch size per call.
SHAPES = {2: (4, 1, 256, 256), 3: (2, 1, 32, 128, 128)}
# One call of guided 3D synthesis on CPU: a single default-size tile (AUTO_TILE_VOXELS) of
# the sketch-conditioned UNet (noisy image + sketch: 2 input channels).
TILE_3D = (1, 2, 40, 192, 264)


# --------------------------------------------------------------------- reference-like UNet
def voxel_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """Standalone 3D pixel shuffle (PyTorch's channel order c, r_d, r_h, r_w):
    [B, C*r^3, D, H, W] -> [B, C, D*r, H*r, W*r]."""
    b, c, d, h, w = x.shape
    co = c // r**3
    x = x.reshape(b, co, r, r, r, d, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, co, d * r, h * r, w * r)


class _Sinusoidal(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        f = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        a = t.float()[:, None] * f[None]
        return torch.cat([a.sin(), a.cos()], dim=-1)


class RefUNet(nn.Module):
    """Reference-like baseline (public code's structure, made dims-generic)."""

    def __init__(self, dims: int, f: int = 16, t_channels: int = 128):
        super().__init__()
        self.dims = dims
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d

        def cpn(cin, cout, **kw):
            return [conv(cin, cout, **kw), nn.PReLU(cout), norm(cout)]

        def tmlp(c):
            return nn.Sequential(
                _Sinusoidal(t_channels), nn.Linear(t_channels, c), nn.PReLU(c), nn.Linear(c, c)
            )

        k3 = dict(kernel_size=3, padding=1)
        k4 = dict(kernel_size=4, stride=2, padding=1)
        r = 2**dims
        self.c = nn.ModuleList(
            [
                nn.Sequential(*cpn(1, f // 2, **k3), *cpn(f // 2, f, **k3)),
                nn.Sequential(*cpn(f, f, **k3), *cpn(f, 2 * f, **k3)),
                nn.Sequential(*cpn(2 * f, 2 * f, **k3), *cpn(2 * f, 4 * f, **k3)),
                nn.Sequential(*cpn(4 * f, 4 * f, **k3), *cpn(4 * f, 8 * f, **k3)),
                nn.Sequential(*cpn(8 * f // r + 4 * f, 8 * f, **k3), *cpn(8 * f, 8 * f, **k3)),
                nn.Sequential(*cpn(8 * f // r + 2 * f, 8 * f, **k3), *cpn(8 * f, 8 * f, **k3)),
                nn.Sequential(*cpn(8 * f // r + f, f, **k3), *cpn(f, f, **k3)),
            ]
        )
        self.t = nn.ModuleList([tmlp(c) for c in (f, 2 * f, 4 * f, 8 * f, 8 * f, 8 * f, f)])
        self.d = nn.ModuleList([nn.Sequential(*cpn(c, c, **k4)) for c in (f, 2 * f, 4 * f)])
        self.u = nn.ModuleList([nn.Sequential(*cpn(8 * f, 8 * f, kernel_size=1)) for _ in range(3)])
        self.out = nn.Sequential(*cpn(f, f, **k3), *cpn(f, f, **k3), conv(f, 1, 1))

    def _shuffle(self, x):
        return nn.functional.pixel_shuffle(x, 2) if self.dims == 2 else voxel_shuffle(x, 2)

    def forward(self, x, t):
        view = (...,) + (None,) * self.dims
        skips = []
        h = x
        for i in range(4):
            h = self.c[i](h) + self.t[i](t)[view]
            if i < 3:
                skips.append(h)
                h = self.d[i](h)
        for i in range(3):
            u = self._shuffle(self.u[i](h))
            h = self.c[4 + i](torch.cat([u, skips.pop()], 1)) + self.t[4 + i](t)[view]
        return self.out(h)


# -------------------------------------------------------------------------- measurement
def matmul_gflops(n: int = 2048, runs: int = 9, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    with torch.inference_mode():
        return 2 * n**3 / median_time(lambda: torch.mm(a, b), runs, 3) / 1e9


def forward_flops(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> int:
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x, t)
    return counter.get_total_flops()


def measure(
    model: nn.Module,
    shape: tuple[int, ...],
    runs: int,
    warmup: int = 2,
    precision: str = "fp32",
) -> dict:
    """PRECISION: fp32, "bf16 autocast" (fp32 weights under autocast, the path before issue
    23) or bf16 (synthesize's path: a bf16 copy of the weights, network_in)."""
    model.eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    t = torch.randint(1, 1000, (x.shape[0],), generator=gen)
    flops = forward_flops(model, x, t)
    net = network_in(model, "bf16") if precision == "bf16" else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast")
    with torch.inference_mode(), autocast:
        sec = median_time(lambda: net(x, t), runs, warmup)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "gflop": flops / 1e9,
        "ms": sec * 1e3,
        "gflops": flops / sec / 1e9,
    }


def main(runs: int = 5) -> list[dict]:
    torch.manual_seed(0)
    threads = set_threads()
    shapes = ", ".join(f"{d}D x={list(s)}" for d, s in SHAPES.items())
    shapes += f", 3D tile x={list(TILE_3D)}"
    print(
        f"torch {torch.__version__}, {threads} threads, mkldnn "
        f"{torch.backends.mkldnn.is_available()}; inputs: {shapes}",
        flush=True,
    )
    models = {}
    for dims in (2, 3):
        models[f"ours-{dims}d"] = (UNet(default_config(dims)), dims)
        models[f"ref-like-{dims}d"] = (RefUNet(dims), dims)
    # C. elegans voxels (z 11x coarser): z kept at every level, more work per voxel
    models["ours-3d-aniso"] = (UNet(default_config(3, (1.0, 0.09, 0.09))), 3)
    conditional = dataclasses.replace(default_config(3), in_channels=2)
    models["ours-3d-tile"] = (UNet(conditional), 3)
    header = (
        f"{'config':<13} {'malloc':<19} {'params':>9} {'GFLOP':>7} {'ms':>8} "
        f"{'GFLOP/s':>8} {'mm GF/s':>8} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header), flush=True)
    rows = []
    for malloc in ("default", "tuned", "tuned bf16 autocast", "tuned bf16"):
        if malloc == "tuned" and not tune_cpu_allocator():
            print("(tune_cpu_allocator unavailable on this platform: skipped)")
            break
        precision = malloc.removeprefix("tuned ") if "bf16" in malloc else "fp32"
        for name, (model, dims) in models.items():
            if name == "ours-3d-tile" and precision == "fp32" and malloc != "tuned":
                continue
            if precision != "fp32" and not name.startswith("ours"):
                continue
            shape = TILE_3D if name == "ours-3d-tile" else SHAPES[dims]
            r = measure(model, shape, runs, precision=precision)
            # next to each row: the machine is shared and noisy; bf16 rows against a bf16 mm
            bf16 = precision != "fp32"
            mm = matmul_gflops(dtype=torch.bfloat16 if bf16 else torch.float32)
            r.update(config=name, malloc=malloc, mm_gflops=mm, ratio=r["gflops"] / mm)
            rows.append(r)
            print(
                f"{name:<13} {malloc:<19} {r['params']:>9,} {r['gflop']:>7.1f} {r['ms']:>8.1f} "
                f"{r['gflops']:>8.1f} {mm:>8.1f} {r['ratio']:>6.2f}",
                flush=True,
            )
    return rows


if __name__ == "__main__":
    main()
