"""Brightness matching at prediction (segment/brightness.py, segment/model.segment): the
statistic, the factor, and the second, dimmed pass, with a stand-in for Cellpose."""

import numpy as np
import pytest
from conftest import discs
from scipy import ndimage

from cellsynth_cli.segment import brightness
from cellsynth_cli.segment.background import normalize_like_cellpose
from cellsynth_cli.segment.model import segment


def test_foreground_top_is_the_quantile_of_pixels_inside_cells_only():
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    masks = np.zeros((10, 10), np.int32)
    masks[:5] = 1  # pixels 0..49; the brighter half outside every cell does not count
    assert brightness.foreground_top([image], [masks]) == pytest.approx(48.51)  # 0.99 of 0..49
    assert brightness.foreground_top([image], [np.zeros_like(masks)]) is None


def test_bright_cells_are_those_brighter_on_average_than_the_training_top():
    normalised = np.array([[0.5, 0.5, 2.0, 2.0, 0.9, 1.3]], np.float32)
    masks = np.array([[1, 1, 2, 2, 3, 3]])
    assert brightness.bright_cells(normalised, masks, trained_top=1.05).tolist() == [2, 3]


def test_redrawn_replaces_only_the_bright_cells_with_the_dimmed_cells_inside_them():
    masks = np.array([[1, 1, 0, 2, 2, 2, 2, 0]])
    dimmed = np.array([[0, 1, 0, 0, 5, 5, 0, 7]])  # 5 inside cell 2; 7 outside every cell
    redrawn = brightness.redrawn(masks, dimmed, bright=np.array([2]))
    assert redrawn.tolist() == [[1, 1, 0, 0, 2, 2, 0, 0]]


def test_dimming_is_the_ratio_above_the_trained_top_and_never_below_one():
    normalised = np.full((4, 4), 0.5, np.float32)
    masks = np.ones((4, 4), np.int32)
    assert brightness.dimming(normalised * 4, masks, trained_top=1.0) == 2.0
    assert brightness.dimming(normalised, masks, trained_top=1.0) == 1.0  # never brightened
    assert brightness.dimming(normalised * 4, np.zeros_like(masks), trained_top=1.0) == 1.0


class ThresholdModel:
    """Cellpose's eval as the connected regions above 0.5 of the image as Cellpose would
    normalise it: a glow around a very bright cell joins the cell, as the network draws it."""

    def __init__(self):
        self.calls = []

    def eval(self, image, normalize=True, **kwargs):
        self.calls.append(normalize)
        seen = normalize_like_cellpose(image) if normalize is not False else image
        return ndimage.label(seen > 0.5)[0], None, None


def _dim_cells_and_one_bright_with_glow():
    """Six discs (170 over a background of 20), a small one at 600 (under 1 % of the
    pixels, so Cellpose's 99th percentile lies on the others) in a glow of 120; and the
    glow's pixels."""
    image, _ = discs((96, 96), [(20, 20), (20, 70), (48, 45), (75, 20), (75, 70), (48, 85)])
    yy, xx = np.mgrid[:96, :96]
    distance = np.hypot(yy - 48, xx - 10)
    image[distance <= 6] += 100
    image[distance <= 3] = 600
    return image, (distance > 3.5) & (distance <= 6)


def test_cells_brighter_than_training_are_redrawn_from_the_image_dimmed():
    image, glow = _dim_cells_and_one_bright_with_glow()
    model, config = ThresholdModel(), {"diameter": 12.0, brightness.CONFIG_KEY: 1.2}
    plain, factor = segment(model, config, image, match_brightness=False)
    assert factor == 1.0 and model.calls == [True]
    matched, factor = segment(model, config, image, match_brightness=True)
    assert model.calls[1:] == [True, False]  # the second pass is normalised here, not again
    assert factor > 2.0
    # the bright nucleus's glow is outside the cell once the image is dimmed
    assert plain[glow].all() and not matched[glow].any()
    assert matched[48, 10] > 0  # the nucleus itself stays
    # the dim cells are not redrawn: the dimmed pass alone would have lost them
    others = (plain > 0) & (plain != plain[48, 10])
    assert (matched[others] > 0).all() and len(np.unique(matched)) == len(np.unique(plain))


def test_no_second_pass_without_cells_brighter_or_without_the_statistic():
    image, _ = _dim_cells_and_one_bright_with_glow()
    model = ThresholdModel()
    trained_on_as_bright = {"diameter": 12.0, brightness.CONFIG_KEY: 5.0}
    assert segment(model, trained_on_as_bright, image, match_brightness=True)[1] == 1.0
    # a model trained before the statistic was recorded: segmented as it always was
    assert segment(model, {"diameter": 12.0}, image, match_brightness=True)[1] == 1.0
    assert model.calls == [True, True]
