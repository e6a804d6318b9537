"""Brightness matching at prediction: nuclei brighter than any the segmenter trained on.

Cellpose normalises every image by its own 1st and 99th percentiles. In an image whose
nuclei are mostly dim, a few bright ones end up far above 1 (the bundled 2D held-back half:
three condensed nuclei at about 2, where the synthetic training images, made by a DDPM that
never outputs more than its training data's 99.8th percentile, stop at about 1.05), and
the segmenter outlines them with their glow, 1.4-1.6x too large (docs/experiments.md).

So `segment train` records the `TOP_QUANTILE` of its training images' nucleus pixels as
Cellpose saw them (`foreground_top`). At prediction, the image is segmented once; if some
of its cells are brighter on average than that, the normalised image is divided by the
ratio of the same quantile of its cells' pixels to the training one and segmented again,
and only those bright cells are redrawn from the dimmed pass (dimming the whole image
would draw every dim nucleus smaller too). An image without such cells is segmented once,
as before; nothing is ever brightened. No label is used: the first pass's cells stand for
the nuclei.
"""

from __future__ import annotations

import numpy as np

from cellsynth_cli.defaults import SEED

TOP_QUANTILE = 0.99  # where the training images' brightest nuclei lie: the tail is the gap
MAX_SAMPLES = 2_000_000  # the quantile from a random subsample of huge training sets
CONFIG_KEY = "foreground_top"  # in segmenter.json: the training set's TOP_QUANTILE


def foreground_top(images: list[np.ndarray], masks: list[np.ndarray]) -> float | None:
    """TOP_QUANTILE of the pixels inside cells over IMAGES (normalised as Cellpose sees
    them) with MASKS; None when no image has a cell."""
    pairs = zip(images, masks, strict=True)
    inside = [np.asarray(im, np.float32)[np.asarray(m) > 0] for im, m in pairs]
    if not any(v.size for v in inside):
        return None
    values = np.concatenate(inside)
    if values.size > MAX_SAMPLES:
        values = np.random.default_rng(SEED).choice(values, MAX_SAMPLES, replace=False)
    return float(np.quantile(values, TOP_QUANTILE))


def bright_cells(normalised: np.ndarray, masks: np.ndarray, trained_top: float) -> np.ndarray:
    """Labels of MASKS whose mean intensity in NORMALISED is above TRAINED_TOP."""
    labels = np.asarray(masks).ravel()
    counts = np.bincount(labels)
    sums = np.bincount(labels, weights=np.asarray(normalised, np.float64).ravel())
    cells = np.flatnonzero(counts[1:]) + 1
    return cells[sums[cells] / counts[cells] > trained_top]


def redrawn(masks: np.ndarray, dimmed: np.ndarray, bright: np.ndarray) -> np.ndarray:
    """MASKS with its BRIGHT cells replaced by the cells of DIMMED (masks of the dimmed
    image) that lie mostly inside them; relabelled 1..n."""
    from skimage.segmentation import relabel_sequential

    region = np.isin(masks, bright)
    out = np.where(region, 0, masks).astype(np.uint32)
    offset = out.max()
    labels, inside = np.unique(dimmed[region], return_counts=True)
    sizes = np.bincount(dimmed.ravel())
    for label, n_inside in zip(labels, inside, strict=True):
        if label and n_inside > 0.5 * sizes[label]:
            out[(dimmed == label) & (out == 0)] = offset + label
    return relabel_sequential(out)[0]


def dimming(normalised: np.ndarray, masks: np.ndarray, trained_top: float) -> float:
    """The factor (>= 1) NORMALISED should be divided by so that the TOP_QUANTILE of its
    pixels inside MASKS is no higher than TRAINED_TOP (1: no cell, or not brighter)."""
    inside = np.asarray(normalised, np.float32)[np.asarray(masks) > 0]
    if inside.size == 0 or trained_top <= 0:
        return 1.0
    return max(1.0, float(np.quantile(inside, TOP_QUANTILE)) / trained_top)
