"""PNG previews so a person can look at a volume without napari: panels side by side.

3D volumes show the middle z slice and the maximum projection along z.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cellsynth_cli.io import Volume


def _views(array: np.ndarray, is_labels: bool) -> list[tuple[str, np.ndarray]]:
    if array.ndim == 2:
        return [("", array)]
    middle = array[array.shape[0] // 2]
    projection = array.max(axis=0)
    return [(f" (z={array.shape[0] // 2})", middle), (" (max-proj.)", projection)]


def _label_colours(labels: np.ndarray) -> np.ndarray:
    """Random but stable colours per label, black background."""
    rng = np.random.default_rng(12345)
    lut = rng.uniform(0.25, 1.0, size=(int(labels.max()) + 1, 3))
    lut[0] = 0.0
    return lut[labels]


def save_panels(path: Path, panels: list[tuple[str, np.ndarray, bool]], dpi: int = 100) -> Path:
    """Write panels (title, array, is_labels) side by side; 3D arrays get two views each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = []
    for title, array, is_labels in panels:
        for suffix, view in _views(np.asarray(array), is_labels):
            views.append((title + suffix, view, is_labels))
    h, w = views[0][1].shape
    scale = 4.0 / max(h, w)
    fig, axes = plt.subplots(1, len(views), figsize=(len(views) * w * scale + 0.4, h * scale + 0.6))
    axes = np.atleast_1d(axes)
    for ax, (title, view, is_labels) in zip(axes, views, strict=True):
        if is_labels:
            ax.imshow(_label_colours(view.astype(np.int64)), interpolation="nearest")
        else:
            lo, hi = np.percentile(view, [0.5, 99.8])
            ax.imshow(view, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def save_sketch_preview(path: Path, volume: Volume) -> Path:
    panels: list[tuple[str, np.ndarray, bool]] = []
    if volume.sketch is not None:
        panels.append(("sketch", volume.sketch, False))
    if volume.masks is not None:
        panels.append(("masks", volume.masks, True))
    return save_panels(path, panels)
