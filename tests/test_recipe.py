"""The pipeline's recipe: defaults, budgets, overrides, the project's TOML file."""

from __future__ import annotations

import pytest

from cellsynth_cli.errors import InputError
from cellsynth_cli.pipeline import recipe as recipes


def test_layers_apply_in_order_defaults_budget_overrides():
    default = recipes.resolve({}, "test")
    assert default.budget == "full" and default.train.steps == recipes.TrainSection().steps
    quick = recipes.resolve({"budget": "quick"}, "test")
    assert quick.train.steps == recipes.BUDGETS["quick"]["train"]["steps"]
    assert quick.train.lr == default.train.lr  # a budget scales the work only
    mine = recipes.resolve({"budget": "quick", "train": {"steps": "123"}}, "test")
    assert mine.train.steps == 123 and mine.simulate.n == quick.simulate.n


def test_set_values_are_typed_and_lists_parse():
    overrides = recipes.typed(
        recipes.parse_settings(["simulate.n=7", "train.channels=8,16", "budget=smoke"]), "--set"
    )
    assert overrides == {"simulate": {"n": 7}, "train": {"channels": [8, 16]}, "budget": "smoke"}


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"train": {"stepz": 1}}, "stepz"),
        ({"trian": {"steps": 1}}, "trian"),
        ({"budget": "huge"}, "huge"),
        ({"simulate": {"n": "many"}}, "many"),
        ({"rounds": {"mirror_only": "kept"}}, "mirror_only"),  # before any stage runs
        ({"rounds": {"min_iou": 1.5}}, "min_iou"),
        ({"segment": {"brightness_jitter": 0.5}}, "brightness_jitter must be in"),
        ({"train": {"condition": "label-sketch"}}, "label-sketch"),  # masks a person drew
        ({"rounds": {"n": 2, "generator_steps": -1}}, "generator_steps must be >= 0"),
        ({"rounds": {"generator_steps": 5}}, "--rounds 2"),  # no round to use it
        ({"rounds": {"n": 2, "generator_steps": 5}, "train": {"condition": "none"}}, "condition"),
        (
            {
                "rounds": {"n": 2, "generator_steps": 5},
                "train": {"model": "bundled:dsb2018-nuclei"},
            },
            "model bundled:dsb2018-nuclei is not one",
        ),
    ],
)
def test_bad_overrides_name_the_problem(overrides, named):
    with pytest.raises(InputError, match=named):
        recipes.resolve(overrides, "test")


def test_a_generator_is_accepted_with_a_model_that_follows_sketches():
    model = "bundled:dsb2018-nuclei-conditional"
    recipe = recipes.resolve(
        {"rounds": {"n": 2, "generator_steps": 5}, "train": {"model": model}}, "t"
    )
    assert recipe.rounds.generator_steps == 5


def test_project_file_round_trips(tmp_path):
    overrides = {"budget": "standard", "segment": {"epochs": 12}, "train": {"model": "runs/x"}}
    path = tmp_path / "pipeline.toml"
    path.write_text(recipes.to_toml(overrides))
    assert recipes.read_overrides(path) == overrides
    full = recipes.read_overrides_text(recipes.full_toml(recipes.resolve(overrides, "t")))
    assert recipes.resolve(full, "t") == recipes.resolve(overrides, "t")
