"""The models that ship inside the package (`--model bundled:NAME`)."""

import json

import numpy as np
import pytest
import torch
from conftest import run_cellsynth

from cellsynth_cli import io
from cellsynth_cli.ddpm import bundled
from cellsynth_cli.ddpm.checkpoint import checkpoint_path, load_model
from cellsynth_cli.errors import InputError

NAME = "dsb2018-nuclei"
# the demo's unconditional model, the conditional one of `make experiment`, the 3D one of
# `make experiment-3d`
NAMES = [NAME, f"{NAME}-conditional", "cells3d-nuclei-conditional"]
# a tiny sketch of each model's dimensionality: (preset, shape)
SKETCH = {2: ("hela", (48, 56)), 3: ("celegans", (8, 40, 48))}


def dims_of(name: str) -> int:
    return 3 if name.startswith("cells3d") else 2


@pytest.mark.parametrize("name", NAMES)
def test_the_demo_model_is_installed_with_the_package(name):
    assert name in bundled.available()
    folder = bundled.resolve(f"bundled:{name}")
    # found through the installed package, with what a user needs to judge and rebuild it
    assert folder.parent == bundled.models_root()
    for file in ("checkpoint.pt", "config.json", "loss.csv", "loss.png"):
        assert (folder / file).stat().st_size > 0, file


@pytest.mark.parametrize("name", NAMES)
def test_the_bundled_checkpoint_loads_weights_only_and_says_how_it_was_made(name):
    path = checkpoint_path(f"bundled:{name}")
    state = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code
    assert "optimizer" not in state  # weights only: a few MB
    model = load_model(f"bundled:{name}")
    made = model.provenance
    assert made["name"] == f"bundled:{name}"
    assert made["steps"] == model.step == state["config"]["steps"]
    assert "cellsynth train" in made["command"] and f"--steps {model.step}" in made["command"]
    assert "left half" in made["data"] and made["rebuild"].startswith("make bundled-model")
    # the intensity normalisation of its training data travels with it
    norm = model.normalization
    assert 0 <= norm["low"] < norm["high"]
    conditional = name.endswith("-conditional")
    assert model.dims == dims_of(name)
    assert model.config.get("condition", "none") == ("pseudo-sketch" if conditional else "none")
    assert ("--condition pseudo-sketch" in made["command"]) == conditional
    # config.json beside it tells the same story
    config = json.loads((path.parent / "config.json").read_text())
    assert config["provenance"] == made
    assert config["normalization"]["low"] == norm["low"]


@pytest.mark.parametrize("name", NAMES)
def test_the_bundled_model_synthesizes_a_tiny_sketch_through_the_cli(name, tmp_path):
    preset, shape = SKETCH[dims_of(name)]
    sim = run_cellsynth(
        "simulate", preset, "-n", 1, "-o", tmp_path / "sim",
        "--shape", ",".join(map(str, shape)), "--seed", 2,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr
    out = tmp_path / "synth"
    args = ["--sketches", tmp_path / "sim", "-o", out, "--t-start", 200, "--steps", 4]
    made = run_cellsynth("synthesize", "--model", f"bundled:{name}", *args)
    assert made.returncode == 0, made.stderr
    sketch = io.read_volume(io.list_volumes(tmp_path / "sim")[0])
    volume = io.read_volume(io.list_volumes(out)[0])
    assert volume.image.shape == shape and np.isfinite(volume.image).all()
    assert np.array_equal(volume.masks, sketch.masks)
    # the image is on the real data's intensity scale and not a copy of the sketch
    norm = load_model(f"bundled:{name}").normalization
    assert norm["low"] - 50 < volume.image.mean() < norm["high"]
    assert volume.image.std() > 1.0
    provenance = io.read_provenance(io.list_volumes(out)[0])
    assert provenance["model_checksum"] == load_model(f"bundled:{name}").checksum
    assert provenance["model"] == f"bundled:{name}"
    # a conditional model follows the sketch, guided with the default w = 2
    conditional = name.endswith("-conditional")
    assert provenance["conditional"] == conditional
    assert provenance["guidance"] == (2.0 if conditional else 1.0)


def test_an_unknown_bundled_name_lists_the_ones_there_are(tmp_path):
    (tmp_path / "sim").mkdir()
    result = run_cellsynth(
        "synthesize", "--model", "bundled:nope", "--sketches", tmp_path / "sim", "-o", tmp_path
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "bundled:nope" in lines[0] and f"bundled:{NAME}" in lines[0]
    with pytest.raises(InputError, match=f"bundled:{NAME}"):
        bundled.resolve("bundled:")


def test_a_bundled_model_cannot_be_resumed(tmp_path):
    result = run_cellsynth("train", "--resume", "-o", f"bundled:{NAME}", "--steps", 2)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
