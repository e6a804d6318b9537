"""The demo picture: per synthetic image, sketch | synthetic with its mask outlines; then a
real crop of the same size, for comparison (2D)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from cellsynth_cli import io


def _display(image: np.ndarray, scale: tuple[float, float] | None = None) -> np.ndarray:
    """Grey values in [0, 1]: on SCALE (lo, hi) when given, else the image's own percentiles."""
    lo, hi = scale if scale is not None else np.percentile(image, [0.5, 99.8])
    return np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)


def main(synth_dir: str, real_dir: str, out: str, n: int = 2) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import mark_boundaries

    real = next(io.read_volumes(Path(real_dir)))
    # synthetic and real images on one grey scale (the real image's), so brightness compares
    scale = tuple(np.percentile(real.image, [0.5, 99.5]))
    panels = []
    for volume in list(io.read_volumes(Path(synth_dir)))[:n]:
        panels.append((f"sketch {volume.name}", _display(volume.sketch)))
        shown = mark_boundaries(_display(volume.image, scale), volume.masks, color=(1.0, 0.35, 0.2))
        panels.append(("synthetic + its masks", shown))
    h, w = panels[0][1].shape[:2]
    panels.append(("real (held-back crop)", _display(real.image[:h, :w], scale)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.5))
    for ax, (title, image) in zip(axes, panels, strict=True):
        ax.imshow(image, cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    tmp = Path(out).with_name(f".{Path(out).name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
