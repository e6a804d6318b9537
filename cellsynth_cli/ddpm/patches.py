"""Random training patches from real volumes, with augmentation that respects the data.

Flips along any axis and 90° rotations in the y-x plane only: z is usually sampled more
coarsely than y and x, so rotations never mix it with an in-plane axis. A 2D model on 3D
data trains on random z slices. Images smaller than the patch are padded by reflection.
Conditional models get aligned patches of the image and its sketch (the same crop and
augmentation), as channels.
"""

from __future__ import annotations

import numpy as np
import torch


def pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reflect-pad the trailing axes of `array` so each is at least `shape`."""
    lead = array.ndim - len(shape)
    pads = [(0, 0)] * lead + [
        (0, max(0, s - a)) for a, s in zip(array.shape[lead:], shape, strict=True)
    ]
    if not any(p[1] for p in pads):
        return array
    return np.pad(array, pads, mode="reflect")  # numpy repeats the reflection if needed


class PatchSampler:
    """Draw augmented patches (B, C, *patch) from volumes in the model's range.

    C is 1, or 2 when `conditions` (one sketch per volume, same shape) are given.
    """

    def __init__(
        self,
        volumes: list[np.ndarray],
        patch: tuple[int, ...],
        dims: int,
        conditions: list[np.ndarray] | None = None,
    ) -> None:
        self.patch = tuple(patch)
        self.dims = dims
        if conditions is None:
            stacks = [v[None] for v in volumes]
        else:
            stacks = [np.stack([v, c]) for v, c in zip(volumes, conditions, strict=True)]
        self.channels = stacks[0].shape[0]
        self.volumes = []
        for v in stacks:
            if dims == 2 and v.ndim == 4:
                self.volumes.extend(pad_to(v[:, z], self.patch) for z in range(v.shape[1]))
            else:
                self.volumes.append(pad_to(v, self.patch))
        # sample volumes in proportion to their size so every voxel is equally likely
        sizes = np.array([v.size for v in self.volumes], dtype=np.float64)
        self.weights = torch.from_numpy(sizes / sizes.sum())

    def sample(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        out = np.empty((batch, self.channels) + self.patch, dtype=np.float32)
        for b in range(batch):
            k = int(torch.multinomial(self.weights, 1, generator=generator))
            vol = self.volumes[k]
            starts = [
                int(torch.randint(0, s - p + 1, (1,), generator=generator))
                for s, p in zip(vol.shape[1:], self.patch, strict=True)
            ]
            crop = tuple(slice(a, a + p) for a, p in zip(starts, self.patch, strict=True))
            out[b] = self._augment(vol[(slice(None), *crop)], generator)
        return torch.from_numpy(out)

    def _augment(self, patch: np.ndarray, generator: torch.Generator) -> np.ndarray:
        """patch: (C, *spatial); every channel gets the same flips and rotation."""
        spatial = patch.ndim - 1
        flips = torch.randint(0, 2, (spatial,), generator=generator).tolist()
        axes = tuple(ax + 1 for ax, f in enumerate(flips) if f)
        if axes:
            patch = np.flip(patch, axis=axes)
        y, x = patch.ndim - 2, patch.ndim - 1
        if patch.shape[y] == patch.shape[x]:  # rotations keep the patch shape only if square
            k = int(torch.randint(0, 4, (1,), generator=generator))
            patch = np.rot90(patch, k, axes=(y, x))
        return patch
