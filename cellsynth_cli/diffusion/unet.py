"""The denoising network eps_theta(x_t, t): one UNet for 2D and 3D (``dims`` is a parameter).

Follows Eschweiler et al. (PLOS Comp Biol 2024): an encoder/decoder UNet with 4 levels of
16/32/64/128 channels, strided-conv downsampling, pixel-shuffle upsampling (a voxel shuffle in
3D) and a sinusoidal embedding of t injected into every block. Measured improvements on top:

- residual blocks with GroupNorm + SiLU instead of conv-PReLU-InstanceNorm;
- the time embedding enters as a per-channel scale and shift (FiLM) folded into the block's
  second GroupNorm, so it costs no extra pass over the feature map;
- channels-last memory layout inside the network (oneDNN's fast path for 3D convolutions;
  contiguous NCDHW 3D convs with few channels are far slower). Callers pass ordinary
  contiguous tensors; the output is contiguous again;
- the final convolution is zero-initialised, so training starts at eps_theta = 0.

On CPU, most of the time outside the convolutions is not arithmetic but page faults: glibc
returns every large feature map to the OS on free and faults it in again on the next
allocation. :func:`tune_cpu_allocator` switches that off for the process (see bench/bench_unet.py
for the measured effect); samplers and training loops on CPU should call it once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

__all__ = [
    "UNet",
    "UNetConfig",
    "anisotropic_factors",
    "default_config",
    "timestep_embedding",
    "tune_cpu_allocator",
]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`; ``to_dict``/``from_dict`` travel in checkpoints."""

    dims: int
    in_channels: int = 1
    out_channels: int = 1
    channels: tuple[int, ...] = (16, 32, 64, 128)  # per level, highest resolution first
    blocks_per_level: int = 1  # residual blocks per level in the encoder and the decoder
    mid_blocks: int = 1  # extra residual blocks at the lowest resolution (the bottleneck)
    time_dim: int = 64  # width of the sinusoidal embedding of t
    emb_dim: int = 128  # width of the time MLP's output, shared by every block
    norm_groups: int = 8  # GroupNorm groups (fewer where a layer has fewer channels)
    channels_last: bool = True  # run the convolutions in channels-last layout (speed)
    # down-sampling factor per axis after each level but the last; None: 2 on every axis.
    # Anisotropic 3D data (z much coarser than y/x) keep z at 1 in the first levels, so the
    # network only halves z once the in-plane resolution has come down to z's.
    down_factors: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.down_factors is not None:
            factors = tuple(tuple(int(f) for f in level) for level in self.down_factors)
            object.__setattr__(self, "down_factors", factors)
            if len(factors) != len(self.channels) - 1 or any(
                len(level) != self.dims or min(level) < 1 or max(level) > 2 for level in factors
            ):
                raise ValueError(
                    f"down_factors must give {len(self.channels) - 1} levels of {self.dims} "
                    f"factors in {{1, 2}}, got {self.down_factors}"
                )
        if self.dims not in (2, 3):
            raise ValueError(f"dims must be 2 or 3, got {self.dims}")
        if len(self.channels) < 1 or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive ints: {self.channels}")
        if self.blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be >= 1, got {self.blocks_per_level}")
        if self.mid_blocks < 0:
            raise ValueError(f"mid_blocks must be >= 0, got {self.mid_blocks}")
        if self.time_dim < 2 or self.time_dim % 2:
            raise ValueError(f"time_dim must be an even number >= 2, got {self.time_dim}")
        if self.in_channels < 1 or self.out_channels < 1 or self.emb_dim < 1:
            raise ValueError("in_channels, out_channels and emb_dim must be positive")
        if self.norm_groups < 1:
            raise ValueError(f"norm_groups must be >= 1, got {self.norm_groups}")

    @property
    def levels(self) -> int:
        return len(self.channels)

    @property
    def factors(self) -> tuple[tuple[int, ...], ...]:
        """Down-sampling factor per axis after each level but the last."""
        if self.down_factors is not None:
            return self.down_factors
        return tuple((2,) * self.dims for _ in range(self.levels - 1))

    @property
    def multiples(self) -> tuple[int, ...]:
        """Every spatial size of the input must be a multiple of these (per axis)."""
        return tuple(int(np.prod([level[a] for level in self.factors])) for a in range(self.dims))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        if self.down_factors is not None:
            d["down_factors"] = [list(level) for level in self.down_factors]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UNetConfig keys: {sorted(unknown)}")
        d = dict(d)
        if "channels" in d:
            d["channels"] = tuple(int(c) for c in d["channels"])
        return cls(**d)


def default_config(dims: int, voxel_size: tuple[float, ...] | None = None) -> UNetConfig:
    """Defaults: the paper's 4 levels of 16/32/64/128 channels, one residual block per level
    in encoder and decoder plus one at the bottleneck.

    1.00 M parameters in 2D and 2.61 M in 3D (paper: 0.9 M and 2.3 M). For 3D voxels whose z
    is coarser than y/x by a factor r >= 1.5, z is not down-sampled in the first
    round(log2 r) levels (at most all of them), so every level sees roughly isotropic voxels.
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    channels = (16, 32, 64, 128)
    return UNetConfig(
        dims=dims,
        channels=channels,
        blocks_per_level=1,
        down_factors=anisotropic_factors(len(channels), voxel_size) if dims == 3 else None,
    )


def anisotropic_factors(
    levels: int, voxel_size: tuple[float, ...] | None
) -> tuple[tuple[int, ...], ...] | None:
    """Per-level (z, y, x) down-sampling for voxels of this size; None when z is not coarse."""
    if voxel_size is None or len(voxel_size) != 3 or min(voxel_size) <= 0:
        return None
    ratio = float(voxel_size[0]) / float(voxel_size[-1])
    if ratio < 1.5:
        return None
    keep_z = min(levels - 1, int(round(math.log2(ratio))))
    return tuple((1 if lvl < keep_z else 2, 2, 2) for lvl in range(levels - 1))


_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed large CPU buffers in the process heap instead of returning them to the OS.

    glibc serves allocations above a (dynamic) threshold with mmap and unmaps them on free, so
    every big feature map is page-faulted in again on the next forward; for 3D patches that
    costs more than the arithmetic of an activation. This sets M_MMAP_THRESHOLD to 1 GiB and
    disables heap trimming (both process-wide, via mallopt). Returns True if applied (glibc
    only); calling it again is a no-op. The price: the heap keeps its peak size.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 1 << 30) == 1 and mallopt(m_trim_threshold, (1 << 31) - 1) == 1
    _ALLOCATOR_TUNED = ok
    return ok


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (integer or real) timesteps t [B] (Vaswani/Ho et al.)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _groups(channels: int, wanted: int) -> int:
    g = min(wanted, channels)
    while channels % g:
        g -= 1
    return g


def _native_conv_falls_back(x: torch.Tensor, w: torch.Tensor, stride, dilation, groups) -> bool:
    """True where ATen's CPU heuristic would skip oneDNN (torch 2.x, Convolution.cpp).

    It skips oneDNN for batch 1 with 3x3(x3) kernels when N*C*D*H <= 20480 (the low-resolution
    levels of a UNet on a single tile) and for unstrided 1x1 convs when single-threaded; the
    fallback (slow_conv3d / thnn_conv2d) was measured 4-30x slower for our 3D shapes.
    """
    strided = any(s != 1 for s in stride)
    dilated = any(d != 1 for d in dilation)
    one_by_one = w.shape[-1] == 1 and w.shape[-2] == 1
    first = strided or dilated or x.shape[0] >= 16 or not one_by_one or torch.get_num_threads() > 1
    second = (
        groups > 1
        or (w.shape[-1] > 3 and w.shape[-2] > 3)
        or x.shape[0] > 1
        or x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] > 20480
    )
    return not (first and second)


class _FastConv:
    """Mixin: route convolutions that ATen would send to its slow CPU fallback to oneDNN."""

    def _conv_forward(self, x, weight, bias):
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and self.padding_mode == "zeros"
            and isinstance(self.padding, tuple)
            and torch.backends.mkldnn.is_available()
            and torch.backends.mkldnn.enabled
            and _native_conv_falls_back(x, weight, self.stride, self.dilation, self.groups)
        ):
            return torch.ops.aten.mkldnn_convolution(
                x,
                weight,
                bias,
                list(self.padding),
                list(self.stride),
                list(self.dilation),
                self.groups,
            )
        return super()._conv_forward(x, weight, bias)


class Conv2d(_FastConv, nn.Conv2d):
    pass


class Conv3d(_FastConv, nn.Conv3d):
    pass


def _conv(dims: int):
    return Conv2d if dims == 2 else Conv3d


def _film_group_norm(
    h: torch.Tensor, norm: nn.GroupNorm, a: torch.Tensor, b: torch.Tensor
) -> torch.Tensor:
    """group_norm(h) * a + b with per-(sample, channel) A and B ([B, C]).

    For one sample they are GroupNorm's own affine: one pass over the feature map instead of
    two (a batch-1 40 x 192 x 264 forward, as tiled synthesis runs it on CPU, measured by hand
    5 % faster under autocast and 9 % in bf16). Larger batches normalise, then multiply-add.
    """
    if h.shape[0] == 1:
        return F.group_norm(h, norm.num_groups, a[0], b[0], norm.eps)
    view = a.shape + (1,) * (h.ndim - 2)
    n = F.group_norm(h, norm.num_groups, eps=norm.eps)
    return torch.addcmul(b.reshape(view), n, a.reshape(view))


class ResBlock(nn.Module):
    """GN-SiLU-conv, GN-FiLM(t)-SiLU-conv, plus a (1x1-conv) skip."""

    def __init__(self, dims: int, cin: int, cout: int, emb_dim: int, groups: int):
        super().__init__()
        conv = _conv(dims)
        self.norm1 = nn.GroupNorm(_groups(cin, groups), cin)
        self.conv1 = conv(cin, cout, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(cout, groups), cout)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.conv2 = conv(cout, cout, 3, padding=1)
        self.skip = conv(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(x), inplace=True)
        h = self.conv1(h)
        # GroupNorm's affine and the FiLM scale/shift fold into one per-(sample, channel)
        # multiply-add: (n * w + b) * (1 + s) + sh = n * [w (1 + s)] + [b (1 + s) + sh].
        scale, shift = self.emb(emb).chunk(2, dim=1)
        scale = 1 + scale
        a = self.norm2.weight * scale
        b = self.norm2.bias * scale + shift
        h = F.silu(_film_group_norm(h, self.norm2, a, b), inplace=True)
        h = self.conv2(h)
        return h.add_(self.skip(x))


class UpCat(nn.Module):
    """Decoder entry: 1x1 conv to cout * 2**dims channels, pixel (2D) / voxel (3D) shuffle by 2,
    concatenated with the skip connection -> [B, cout + skip channels, *2 spatial].

    The shuffle writes straight into the concatenation buffer (one copy instead of a shuffle,
    a layout conversion and a cat). Its channel order is (r_d, r_h, r_w, c), c fastest, which in
    channels-last layout moves contiguous runs of c values; the conv in front learns whichever
    order is used, so this is still a pixel shuffle up to a fixed permutation of its inputs.
    """

    def __init__(self, dims: int, cin: int, cout: int, factors: tuple[int, ...] | None = None):
        super().__init__()
        self.dims = dims
        self.cout = cout
        self.factors = tuple(factors) if factors is not None else (2,) * dims
        self.conv = _conv(dims)(cin, cout * int(np.prod(self.factors)), 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        d, f, c = self.dims, self.factors, self.cout
        b, spatial = h.shape[0], h.shape[2:]
        out_spatial = tuple(s * r for s, r in zip(spatial, f, strict=True))
        fmt = torch.channels_last if d == 2 else torch.channels_last_3d
        layout = fmt if skip.is_contiguous(memory_format=fmt) else torch.contiguous_format
        out = torch.empty(
            (b, c + skip.shape[1], *out_spatial),
            dtype=h.dtype,
            device=h.device,
            memory_format=layout,
        )
        perm = (0, *range(2, d + 2), 1)  # logical [B, *S, C]
        src = h.permute(perm).reshape(b, *spatial, int(np.prod(f)), c)
        dst = out[:, :c].permute(perm)
        # One strided copy per sub-position: a single 2d+2-dim copy_ was measured ~6x slower.
        for k, offsets in enumerate(itertools.product(*(range(r) for r in f))):
            sub = (slice(None), *(slice(o, None, r) for o, r in zip(offsets, f, strict=True)))
            dst[sub].copy_(src[..., k, :])
        out[:, c:].copy_(skip)
        return out


class UNet(nn.Module):
    """eps_theta(x_t, t) for 2D ([B, C, H, W]) or 3D ([B, C, D, H, W]) inputs."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        dims, ch, g, e = config.dims, config.channels, config.norm_groups, config.emb_dim
        conv = _conv(dims)
        self.time_mlp = nn.Sequential(
            nn.Linear(config.time_dim, e), nn.SiLU(), nn.Linear(e, e), nn.SiLU()
        )
        self.inc = conv(config.in_channels, ch[0], 3, padding=1)
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        for lvl, c in enumerate(ch):
            cin = ch[lvl - 1] if lvl > 0 else ch[0]
            blocks = [
                ResBlock(dims, cin if i == 0 else c, c, e, g)
                for i in range(config.blocks_per_level)
            ]
            self.enc.append(nn.ModuleList(blocks))
            if lvl < len(ch) - 1:
                self.down.append(conv(c, c, 3, stride=config.factors[lvl], padding=1))
        self.mid = nn.ModuleList(
            ResBlock(dims, ch[-1], ch[-1], e, g) for _ in range(config.mid_blocks)
        )
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for lvl in range(len(ch) - 2, -1, -1):
            c = ch[lvl]
            self.up.append(UpCat(dims, ch[lvl + 1], c, config.factors[lvl]))
            blocks = [
                ResBlock(dims, 2 * c if i == 0 else c, c, e, g)
                for i in range(config.blocks_per_level)
            ]
            self.dec.append(nn.ModuleList(blocks))
        self.out_norm = nn.GroupNorm(_groups(ch[0], g), ch[0])
        self.outc = conv(ch[0], config.out_channels, 3, padding=1)
        nn.init.zeros_(self.outc.weight)
        nn.init.zeros_(self.outc.bias)
        self._fmt = torch.channels_last if dims == 2 else torch.channels_last_3d
        if config.channels_last:
            self.to(memory_format=self._fmt)

    @property
    def multiples(self) -> tuple[int, ...]:
        """Every spatial size of the input must be a multiple of these (per axis)."""
        return self.config.multiples

    def check_input(self, x: torch.Tensor) -> None:
        dims = self.config.dims
        if x.ndim != dims + 2:
            got = f"a {x.ndim - 2}D input" if x.ndim >= 3 else "an input"
            raise ValueError(
                f"this is a {dims}D model; got {got} of shape {tuple(x.shape)} "
                f"(expected [B, C, {', '.join('DHW'[3 - dims :])}])"
            )
        if x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"expected {self.config.in_channels} input channel(s), got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        spatial = tuple(x.shape[2:])
        if any(s % m for s, m in zip(spatial, self.multiples, strict=True)):
            raise ValueError(
                f"spatial size {spatial} is not a multiple of {self.multiples} "
                f"(this UNet has {self.config.levels} levels); pad or crop the input"
            )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [B] = [{x.shape[0]}], got {tuple(t.shape)}")
        t_emb = timestep_embedding(t, self.config.time_dim).to(self.time_mlp[0].weight.dtype)
        emb = self.time_mlp(t_emb).to(x.dtype)
        if self.config.channels_last:
            x = x.contiguous(memory_format=self._fmt)
        h = self.inc(x)
        skips = []
        for lvl, blocks in enumerate(self.enc):
            for block in blocks:
                h = block(h, emb)
            if lvl < len(self.down):
                skips.append(h)
                h = self.down[lvl](h)
        for block in self.mid:
            h = block(h, emb)
        for up, blocks in zip(self.up, self.dec, strict=True):
            h = up(h, skips.pop())
            for block in blocks:
                h = block(h, emb)
        h = F.silu(self.out_norm(h), inplace=True)
        return self.outc(h).contiguous()
