"""Random training patches from real volumes, with augmentation that respects the data.

Flips along any axis and 90° rotations in the y-x plane only: z is usually sampled more
coarsely than y and x, so rotations never mix it with an in-plane axis. A 2D model on 3D
data trains on random z slices. Images smaller than the patch are padded by reflection.
"""

from __future__ import annotations

import numpy as np
import torch


def pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reflect-pad `array` so every axis is at least `shape`."""
    pads = [(0, max(0, s - a)) for a, s in zip(array.shape, shape, strict=True)]
    if not any(p[1] for p in pads):
        return array
    return np.pad(array, pads, mode="reflect")  # numpy repeats the reflection if needed


class PatchSampler:
    """Draw augmented patches (B, 1, *patch) from a list of volumes in the model's range."""

    def __init__(self, volumes: list[np.ndarray], patch: tuple[int, ...], dims: int) -> None:
        self.patch = tuple(patch)
        self.dims = dims
        self.volumes = []
        for v in volumes:
            if dims == 2 and v.ndim == 3:
                self.volumes.extend(pad_to(s, self.patch) for s in v)  # z slices
            else:
                self.volumes.append(pad_to(v, self.patch))
        # sample volumes in proportion to their size so every voxel is equally likely
        sizes = np.array([v.size for v in self.volumes], dtype=np.float64)
        self.weights = torch.from_numpy(sizes / sizes.sum())

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        out = np.empty((batch, 1) + self.patch, dtype=np.float32)
        for b in range(batch):
            k = int(torch.multinomial(self.weights, 1, generator=generator))
            vol = self.volumes[k]
            starts = [
                int(torch.randint(0, s - p + 1, (1,), generator=generator))
                for s, p in zip(vol.shape, self.patch, strict=True)
            ]
            patch = vol[tuple(slice(a, a + p) for a, p in zip(starts, self.patch, strict=True))]
            out[b, 0] = self._augment(patch, generator)
        return torch.from_numpy(out)

    def _augment(self, patch: np.ndarray, generator: torch.Generator) -> np.ndarray:
        flips = torch.randint(0, 2, (patch.ndim,), generator=generator).tolist()
        axes = tuple(ax for ax, f in enumerate(flips) if f)
        if axes:
            patch = np.flip(patch, axis=axes)
        y, x = patch.ndim - 2, patch.ndim - 1
        if patch.shape[y] == patch.shape[x]:  # rotations keep the patch shape only if square
            k = int(torch.randint(0, 4, (1,), generator=generator))
            patch = np.rot90(patch, k, axes=(y, x))
        return patch
