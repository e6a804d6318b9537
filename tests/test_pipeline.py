"""`cellsynth pipeline` through the installed executable: the smoke budget end to end in 2D
and 3D, make's rule (skip, rerun downstream only), resume after kill -9 in every stage (SIGTERM
in training), and bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import REPO, run_cellsynth

from cellsynth_cli import io
from cellsynth_cli.io.export import write_tiff_volume
from cellsynth_cli.pipeline.run import STAGES
from cellsynth_cli.pipeline.stages import KILL_ENV

STAGE_NAMES = [s.name for s in STAGES]


def _real_2d(project: Path) -> Path:
    """A corner of the bundled image, no masks: what a user without labels has."""
    real = project / "real"
    real.mkdir(parents=True)
    image = tifffile.imread(REPO / "data" / "dsb2018" / "dsb2018.tif")[:128, :160]
    tifffile.imwrite(real / "dsb.tif", image)
    return real


def _labelled_2d(folder: Path) -> Path:
    """The same corner with its masks: a labelled set for --score (never trained on)."""
    folder.mkdir(parents=True)
    for name in ("dsb2018.tif", "dsb2018_masks.tif"):
        corner = tifffile.imread(REPO / "data" / "dsb2018" / name)[:128, :160]
        tifffile.imwrite(folder / name.replace("dsb2018", "dsb"), corner)
    return folder


def _pipeline(project: Path, *args, env: dict | None = None):
    return run_cellsynth("pipeline", project, "--budget", "smoke", "--json", *args, env=env)


def _statuses(result) -> dict[str, str]:
    assert result.returncode == 0, result.stderr
    return {name: row["status"] for name, row in json.loads(result.stdout)["stages"].items()}


@pytest.fixture(scope="module")
def smoke_2d(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("pipeline") / "project"
    _real_2d(project)
    statuses = _statuses(_pipeline(project))
    assert set(statuses) == {*STAGE_NAMES, "report"}
    assert all(status == "ran" for status in statuses.values())
    return project


def _final_outputs(project: Path) -> dict[str, np.ndarray]:
    """The synthetic images and the predicted masks: what a user keeps."""
    arrays = {}
    for folder, attr in (("synth", "image"), ("pred", "masks")):
        for path in io.list_volumes(project / folder):
            arrays[f"{folder}/{path.name}"] = getattr(io.read_volume(path), attr)
    return arrays


def test_smoke_pipeline_writes_every_output(smoke_2d):
    for output in ("fit.toml", "runs/ddpm/checkpoint.pt", "seg", "report.md", "report.png"):
        assert (smoke_2d / output).exists(), output
    assert len(io.list_volumes(smoke_2d / "sim")) == 2
    predicted = io.read_volume(smoke_2d / "pred" / "dsb.zarr")
    assert predicted.masks.shape == (128, 160)
    assert 'budget = "smoke"' in (smoke_2d / "pipeline.toml").read_text()
    assert (smoke_2d / "runs" / "latest").resolve() == (smoke_2d / "runs" / "ddpm").resolve()
    report = (smoke_2d / "report.md").read_text()
    assert "No mask drawn by a person was read" in report and "| train |" in report
    assert not list(smoke_2d.rglob(".*tmp*"))


def test_the_report_checks_itself_and_the_cli_warns(smoke_2d):
    """Every check out of range is a warning line, in the report and printed by the CLI (a
    smoke run's segmenter finds next to nothing: something is always off)."""
    summary = json.loads((smoke_2d / "report.json").read_text())
    off = [c for c in summary["checks"] if not c["ok"]]
    assert off and len(summary["warnings"]) == len(off) + len(summary["results"]["fit"]["warnings"])
    report = (smoke_2d / "report.md").read_text()
    assert "## Checks without labels" in report
    assert all(f"- **warning**: {w}" in report for w in summary["warnings"])
    rerun = run_cellsynth("pipeline", smoke_2d, "--budget", "smoke")  # up to date: seconds
    assert rerun.returncode == 0, rerun.stderr
    printed = [line for line in rerun.stderr.splitlines() if line.startswith("warning: ")]
    assert len(printed) == len(summary["warnings"]), rerun.stderr  # the console is stderr


@pytest.mark.slow  # over 80 s in `pytest --durations` (2 cores, shared)
def test_rerun_skips_and_a_change_reruns_only_downstream(smoke_2d, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(smoke_2d, project, symlinks=True)
    again = _statuses(_pipeline(project))
    assert all(again[name] == "up to date" for name in STAGE_NAMES)
    assert again["report"] == "up to date"  # nothing to redraw or score again
    _stages_made_by_another_version_are_kept_and_named(project)

    changed = _statuses(_pipeline(project, "--set", "simulate.n=3"))
    rerun = {name for name in STAGE_NAMES if changed[name] == "ran"}
    assert changed["report"] == "ran"
    # t_start reads the simulated sketches; fit and the DDPM do not depend on them
    assert rerun == {"simulate", "t_start", "synthesize", "clean", "segment", "predict", "rounds"}
    assert len(io.list_volumes(project / "synth")) == 3
    assert "n = 3" in (project / "pipeline.toml").read_text()  # kept for the next run

    forced = _statuses(_pipeline(project, "--from", "segment"))
    assert {n for n in STAGE_NAMES if forced[n] == "ran"} == {"segment", "predict", "rounds"}
    redrawn = _statuses(_pipeline(project, "--from", "report"))
    assert {name for name, status in redrawn.items() if status == "ran"} == {"report"}

    # a DDPM made elsewhere: the fit and the sketches stay, the conditional model starts at T
    shipped = _pipeline(project, "--set", "train.model=bundled:dsb2018-nuclei-conditional")
    ran = {name for name, status in _statuses(shipped).items() if status == "ran"}
    assert ran == set(STAGE_NAMES) - {"fit", "simulate"} | {"report"}
    assert (project / "runs" / "ddpm").is_symlink()
    assert json.loads((project / "t_start.json").read_text())["t_start"] == 1000


def _stages_made_by_another_version_are_kept_and_named(project: Path) -> None:
    """After an upgrade, a rerun keeps what an earlier cellsynth made (stamps cover settings
    and inputs, not code) and says so, a line per stage, in its output and in the report."""
    from cellsynth_cli import __version__

    state = project / ".cellsynth"
    records = {name: json.loads((state / f"{name}.json").read_text()) for name in STAGE_NAMES}
    assert {record["version"] for record in records.values()} == {__version__}
    records["fit"]["version"] = "0.0.1"
    del records["train"]["version"]  # a record from before versions were kept
    for name in ("fit", "train"):
        (state / f"{name}.json").write_text(json.dumps(records[name]))
    rerun = run_cellsynth("pipeline", project)  # as a user sees it, not --json
    assert rerun.returncode == 0, rerun.stderr
    lines = rerun.stderr.splitlines()  # progress and stage lines go to stderr
    kept = f"fit: up to date, made by cellsynth 0.0.1, this is {__version__}: `--from fit`"
    assert kept in lines[0]
    train = next(line for line in lines if line.startswith("train:"))
    assert "made by an earlier cellsynth (version unrecorded)" in train and "--from train" in train
    assert "simulate: up to date" in rerun.stderr and "simulate: up to date," not in rerun.stderr
    assert "report: running" in rerun.stderr  # it names them, so it is redrawn
    report = (project / "report.md").read_text()
    assert "- fit: up to date, made by cellsynth 0.0.1" in report and "- train:" in report
    made_by = json.loads((project / "report.json").read_text())["made_by_another_version"]
    assert set(made_by) == {"fit", "train"}


@pytest.mark.slow  # over 80 s in `pytest --durations` (2 cores, shared)
def test_self_training_round_2_reruns_only_the_rounds(smoke_2d, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(smoke_2d, project, symlinks=True)
    labelled = _labelled_2d(tmp_path / "labelled")
    result = _pipeline(project, "--rounds", "2", "--score", labelled)
    ran = {name for name, status in _statuses(result).items() if status == "ran"}
    assert ran == {"rounds", "report"}
    # --score: every round's segmenter scored, with where its errors are
    real_cells = len(np.unique(tifffile.imread(labelled / "dsb_masks.tif"))) - 1
    scores = json.loads((project / "report.json").read_text())["scores"]
    assert set(scores["rounds"]) == set(scores["round_errors"]) == {"1", "2"}
    for counts in scores["round_errors"].values():
        assert counts["real"] == real_cells and 0 <= counts["missed"] <= real_cells
    assert "Where the errors are" in (project / "report.md").read_text()
    rounds = json.loads((project / "rounds.json").read_text())
    assert [r["round"] for r in rounds["rounds"]] == [1, 2]
    assert rounds["kept"] in (1, 2) and rounds["seg"] == rounds["rounds"][rounds["kept"] - 1]["seg"]
    for r in rounds["rounds"]:  # the guard's counts of every round's segmenter
        assert 0 <= r["n_confident"] <= r["n_cells"]
    assert (project / "rounds" / "r2" / "seg" / "segmenter.json").exists()
    predicted = io.read_volume(project / "rounds" / "r2" / "pred" / "dsb.zarr")
    assert predicted.masks.shape == (128, 160)
    # round 2 trains on every synthetic image (and the crops, none from a smoke segmenter)
    assert len(io.list_volumes(project / "rounds" / "r2" / "train")) >= 2
    assert "Self-training rounds" in (project / "report.md").read_text()
    assert "n = 2" in (project / "pipeline.toml").read_text()
    again = _statuses(_pipeline(project))
    assert again["rounds"] == "up to date"


@pytest.mark.slow  # a DDPM fine-tuning, a synthesis and a Cellpose training
def test_round_2_generator_fine_tunes_the_ddpm_on_round_1s_masks(smoke_2d, tmp_path):
    import torch

    project = tmp_path / "project"
    shutil.copytree(smoke_2d, project, symlinks=True)
    # a smoke segmenter finds next to no cell: round 1's masks are the corner's real ones
    real = tifffile.imread(REPO / "data" / "dsb2018" / "dsb2018_masks.tif")[:128, :160]
    predicted = io.read_volume(project / "pred" / "dsb.zarr")
    io.write_volume(project / "pred", replace(predicted, masks=real), overwrite=True)
    generator = ["--rounds", "2", "--set", "rounds.generator_steps=2"]
    # killed after the round's first synthetic image: the rerun resumes inside the round
    killed = _pipeline(project, *generator, env={KILL_ENV: "rounds"})
    assert killed.returncode != 0 and (project / "rounds" / "r2" / "synth").is_dir()
    statuses = _statuses(_pipeline(project, *generator))
    assert statuses["rounds"] == "resumed"
    assert {n for n, status in statuses.items() if status == "ran"} == {"report"}
    round_2 = json.loads((project / "rounds.json").read_text())["rounds"][1]
    assert round_2["generator"]["steps"] == 2 and round_2["generator"]["clean"]["of"] == 2
    r2 = project / "rounds" / "r2"
    tuned = torch.load(r2 / "ddpm" / "checkpoint.pt", weights_only=True)
    assert tuned["config"]["condition"] == "label-sketch"
    assert tuned["init"]["model"] == str((project / "runs" / "ddpm").resolve())
    sketched = json.loads((r2 / "ddpm" / "config.json").read_text())["label_sketches"]
    assert sketched["nuclei_per_image"] == [len(np.unique(real)) - 1]
    # round 2's Cellpose trains on the new synthetic images, not round 1's
    synthetic = [p for p in (r2 / "train").iterdir() if "crop" not in p.name]
    assert synthetic and all(p.resolve().parent == (r2 / "synth").resolve() for p in synthetic)
    assert "own (2 steps)" in (project / "report.md").read_text()


def test_a_generator_needs_a_sketch_conditioned_ddpm(tmp_path):
    project = tmp_path / "project"
    _real_2d(project)
    generator = ["--rounds", "2", "--set", "rounds.generator_steps=5"]
    result = _pipeline(project, "--set", "train.condition=none", *generator)
    assert result.returncode == 2
    # the recipe's section names are printed as they are (not swallowed as rich markup)
    assert "[rounds] generator_steps fine-tunes a sketch-conditioned DDPM" in result.stderr
    assert "Traceback" not in result.stderr and not (project / "runs").exists()


@pytest.mark.slow  # over 80 s in `pytest --durations` (2 cores, shared)
def test_killed_in_every_stage_then_rerun_ends_like_one_run(smoke_2d, tmp_path):
    """kill -9 in every stage but training, which gets a batch scheduler's SIGTERM: it
    checkpoints and stops cleanly, and the next run resumes it."""
    project = tmp_path / "project"
    _real_2d(project)
    for stage in STAGE_NAMES:
        if stage == "train":
            stopped = _pipeline(project, env={KILL_ENV: "train:TERM"})
            assert stopped.returncode == 130, stopped.stderr
            assert "interrupted in train" in stopped.stdout + stopped.stderr
            assert "Traceback" not in stopped.stderr
            assert (project / "runs" / "ddpm" / "checkpoint.pt").exists()
            continue
        killed = _pipeline(project, env={KILL_ENV: stage})
        assert killed.returncode == -9, (stage, killed.stderr)
    final = _pipeline(project)
    statuses, stages = _statuses(final), json.loads(final.stdout)["stages"]
    assert "resumed" in statuses.values() or "ran" in statuses.values()
    assert stages["fit"]["status"] == "up to date"
    assert stages["train"]["result"]["resumed"]  # from its checkpoint, not from step 0
    expected, got = _final_outputs(smoke_2d), _final_outputs(project)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert not [p for p in project.rglob("*") if ".tmp" in p.name]


@pytest.mark.slow  # over 80 s in `pytest --durations` (2 cores, shared)
def test_smoke_pipeline_3d(tmp_path):
    project = tmp_path / "project"
    (project / "real").mkdir(parents=True)
    stack = io.read_volume(REPO / "data" / "cells3d" / "cells3d.tif")
    # 24 planes of a corner at half the in-plane resolution: 14 nuclei, anisotropic voxels
    corner = stack.image[14:38, :192:2, :192:2]
    small = io.Volume("cells", image=corner, voxel_size=(0.29, 0.52, 0.52))
    write_tiff_volume(project / "real", small)
    out = _pipeline(project)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)["stages"]
    assert all(row["status"] == "ran" for row in result.values())
    # a 3D conditional DDPM: the auto t_start is the noise analysis, not T (T failed in 3D)
    assert result["t_start"]["result"]["rule"] == "kld"
    predicted = io.read_volume(project / "pred" / "cells.zarr")
    assert predicted.masks.shape == (24, 96, 96)
    assert len(io.read_volume(io.list_volumes(project / "synth")[0]).image.shape) == 3


def test_bad_input_is_one_line_and_nothing_is_lost(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = run_cellsynth("pipeline", empty, "--budget", "smoke")
    assert missing.returncode == 2 and "real" in missing.stderr
    assert "Traceback" not in missing.stderr and not (empty / "pipeline.toml").exists()

    project = tmp_path / "project"
    _real_2d(project)
    unknown = run_cellsynth("pipeline", project, "--set", "train.stepz=3")
    assert unknown.returncode == 2 and "stepz" in unknown.stderr
    budget = run_cellsynth("pipeline", project, "--budget", "huge")
    assert budget.returncode == 2 and "smoke" in budget.stderr

    mine = project / "sim" / "mine.txt"  # a user's own sim/: never replaced silently
    mine.parent.mkdir()
    mine.write_text("keep me")
    foreign = run_cellsynth("pipeline", project, "--budget", "smoke")
    assert foreign.returncode == 2 and "--overwrite" in foreign.stderr
    assert mine.read_text() == "keep me"
    assert len(foreign.stderr.strip().splitlines()) == 1
