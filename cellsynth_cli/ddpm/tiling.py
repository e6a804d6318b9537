"""Overlapping tiles for images larger than the network's patch: grid, blend window, batching.

At every reverse step the noise prediction for the whole volume is assembled from tiles
evaluated in batches and blended with a smooth window (weights normalised to sum to 1), so
the volume is one consistent sample, without the seams of sampling tiles independently.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import torch


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# Default tile budget: the whole volume in one network call up to this many voxels (2048^2 in
# 2D, 64x256x256 in 3D; ~3 GB peak for the 3D UNet in fp32). Measured on the full C. elegans
# volume (bench_synthesis_3d): 2^21 -> 9 tiles, 23.8 s/step, 2.1 GB; 2^22 -> 4 tiles, 18.1 s,
# 3.5 GB; 2^23 -> 2 tiles, 18.7 s, 7.1 GB. On a CPU the network costs the same per
# voxel at any batch, so one big tile beats many overlapping small ones (bench_synthesis).
AUTO_TILE_VOXELS = 2**22


def auto_tile(
    shape: tuple[int, ...],
    overlap: tuple[int, ...],
    multiple: int | tuple[int, ...],
    max_voxels: int,
) -> tuple[int, ...]:
    """The largest tiles (multiples of `multiple`, per axis) that cover `shape` within
    `max_voxels`.

    Starts from one tile = the whole (padded) volume and splits the longest tile axis into one
    more tile at a time, keeping `overlap` between neighbours.
    """
    counts = [1] * len(shape)
    multiples = (multiple,) * len(shape) if isinstance(multiple, int) else tuple(multiple)

    def size(axis: int) -> int:
        n, s, o = counts[axis], shape[axis], overlap[axis]
        return min(s, round_up(-(-(s + (n - 1) * o) // n), multiples[axis]))

    tile = [size(a) for a in range(len(shape))]
    while int(np.prod(tile)) > max_voxels:
        shrinkable = [a for a in range(len(shape)) if tile[a] > overlap[a] + multiples[a]]
        if not shrinkable:
            break  # the budget is a preference: tiles never get smaller than overlap + multiple
        axis = max(shrinkable, key=lambda a: tile[a])
        counts[axis] += 1
        tile[axis] = size(axis)
    return tuple(tile)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length `tile` covering [0, size) with at least `overlap`."""
    if tile >= size:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got overlap={overlap}, tile={tile}")
    stride = tile - overlap
    n = -(-(size - tile) // stride) + 1
    # spread the tiles evenly so every overlap is >= the requested one
    return np.round(np.linspace(0, size - tile, n)).astype(int).tolist()


def ramp_1d(length: int, ramp_before: int, ramp_after: int) -> np.ndarray:
    """1 in the middle, a raised-cosine ramp over the overlaps towards neighbouring tiles."""
    w = np.ones(length, dtype=np.float64)
    for ramp, sl in ((ramp_before, slice(0, None)), (ramp_after, slice(None, None, -1))):
        if ramp > 0:
            x = (np.arange(ramp) + 0.5) / ramp
            w[sl][:ramp] = np.minimum(w[sl][:ramp], 0.5 - 0.5 * np.cos(np.pi * x))
    return w


def tile_grid(
    shape: tuple[int, ...], tile: tuple[int, ...], overlap: tuple[int, ...]
) -> list[tuple[slice, ...]]:
    per_axis = [tile_starts(s, t, o) for s, t, o in zip(shape, tile, overlap, strict=True)]
    return [
        tuple(slice(a, a + min(t, s)) for a, t, s in zip(starts, tile, shape, strict=True))
        for starts in itertools.product(*per_axis)
    ]


def blend_weights(shape: tuple[int, ...], tiles: list[tuple[slice, ...]]) -> list[np.ndarray]:
    """Per-tile weights, normalised so that they sum to exactly 1 at every voxel."""
    raw = []
    for tile in tiles:
        axes = []
        for ax, sl in enumerate(tile):
            others = [t[ax] for t in tiles if t[ax] != sl]
            before = max(
                (o.stop - sl.start for o in others if o.start < sl.start < o.stop), default=0
            )
            after = max(
                (
                    sl.stop - o.start
                    for o in others
                    if o.start < sl.stop <= o.stop and o.start > sl.start
                ),
                default=0,
            )
            axes.append(ramp_1d(sl.stop - sl.start, before, after))
        raw.append(_outer(axes))
    total = np.zeros(shape, dtype=np.float64)
    for tile, w in zip(tiles, raw, strict=True):
        total[tile] += w
    if total.min() <= 0:
        raise ValueError("tiles do not cover the volume")  # cannot happen with tile_grid
    return [(w / total[tile]).astype(np.float32) for tile, w in zip(tiles, raw, strict=True)]


def _outer(vectors: list[np.ndarray]) -> np.ndarray:
    out = vectors[0]
    for v in vectors[1:]:
        out = np.multiply.outer(out, v)
    return out


class TiledPredictor:
    """Evaluate a network on a big volume tile by tile, in batches, and blend the outputs.

    `net(x, t)` takes (B, 1, *tile) and a (B,) tensor of timesteps. The volume must already be
    padded so every axis is >= the tile and a multiple of the network's divisor. With a
    `condition` (1, C, *shape), the same tiles of it follow x as channels: (B, 1 + C, *tile).
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        shape: tuple[int, ...],
        tile: tuple[int, ...],
        overlap: tuple[int, ...],
        batch: int,
        device: torch.device | str = "cpu",
        condition: torch.Tensor | None = None,
    ) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.net = net
        self.shape = tuple(shape)
        self.tiles = tile_grid(self.shape, tile, overlap)
        self.weights = [
            torch.from_numpy(w).to(device) for w in blend_weights(self.shape, self.tiles)
        ]
        self.batch = batch
        self.condition = condition

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """x: (1, 1, *shape) -> blended prediction of the same shape."""
        out = torch.zeros_like(x)
        for first in range(0, len(self.tiles), self.batch):
            group = self.tiles[first : first + self.batch]
            stack = torch.stack([x[(0, slice(0, 1), *tile)] for tile in group])
            if self.condition is not None:
                cond = torch.stack([self.condition[(0, slice(None), *tile)] for tile in group])
                stack = torch.cat([stack, cond.to(stack.dtype)], dim=1)
            times = torch.full((len(group),), t, dtype=torch.long, device=x.device)
            pred = self.net(stack, times).to(x.dtype)
            for k, tile in enumerate(group):
                out[(0, 0, *tile)] += pred[k, 0] * self.weights[first + k]
        return out
