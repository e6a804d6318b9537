"""Presets load from TOML, overrides are typed, bad keys and values are named."""

import pytest

from cellsynth_cli.errors import InputError
from cellsynth_cli.simulate.config import (
    SimulationConfig,
    load_preset,
    parse_overrides,
    parse_shape,
    preset_names,
    replace,
)


def test_all_five_presets_exist_with_the_paper_shapes():
    assert set(preset_names()) >= {"arabidopsis", "celegans", "tribolium", "mouse-stem", "hela"}
    assert load_preset("celegans").shape == (35, 512, 708)
    assert load_preset("tribolium").shape == (13, 1700, 2450)
    assert load_preset("mouse-stem").shape == (1024, 1024)
    assert load_preset("hela").shape == (700, 1100)
    assert len(load_preset("arabidopsis").shape) == 3


def test_overrides_are_coerced_to_field_types():
    cfg = replace(
        load_preset("hela"),
        parse_overrides(["n_cells=5,9", "radius=3,4.5", "overlap=false", "deform_grid=6"]),
        "t",
    )
    assert cfg.n_cells == (5, 9) and cfg.radius == (3.0, 4.5)
    assert cfg.overlap is False and cfg.deform_grid == 6


def test_round_trip_through_dict():
    cfg = load_preset("mouse-stem")
    assert SimulationConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_key_lists_valid_ones():
    with pytest.raises(InputError, match="unknown setting.*bogus.*valid:.*n_cells"):
        replace(load_preset("hela"), {"bogus": 1}, "--set")


@pytest.mark.parametrize("item", ["n_cells", "=3", "n_cells="])
def test_malformed_set(item):
    with pytest.raises(InputError, match="key=value"):
        parse_overrides([item])


@pytest.mark.parametrize(
    "changes",
    [
        {"n_cells": "9,5"},
        {"radius": "a,b"},
        {"n_cells": "1"},
        {"overlap": "maybe"},
        {"region": "cube"},
    ],
)
def test_bad_values_are_named(changes):
    with pytest.raises(InputError, match=list(changes)[0]):
        replace(load_preset("hela"), changes, "--set")


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(InputError, match="unknown preset 'zebrafish'.*celegans"):
        load_preset("zebrafish")


@pytest.mark.parametrize("text", ["1,2,3,4", "a,b", "0,10", "10"])
def test_bad_shape(text):
    with pytest.raises(InputError, match="--shape"):
        parse_shape(text)


def test_shape_parses():
    assert parse_shape("35,128,177") == (35, 128, 177)
