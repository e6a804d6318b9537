"""The short commands users type chain through a working directory (DESIGN §8).

real/ -> simulate -> sim/ -> train -> runs/<data>-<time>/ + runs/latest -> synthesize -> synth/
-> evaluate (as sets against real/) -> segment train/predict/score -> export, each run through
the real `cellsynth` executable in a temporary directory, with tiny settings.
"""

import json
import os
from datetime import datetime

import numpy as np
import pytest
import tifffile
from conftest import DSB_DIR, run_cellsynth

from cellsynth_cli import io, workdir

TINY_SIM = ["--shape", "64,64", "--set", "radius=6,9", "--set", "n_cells=4,8"]
TINY_TRAIN = ["--steps", "4", "--patch", "32,32", "--channels", "8,16", "--batch", "2"]


def ok(result):
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def project(tmp_path):
    """A project directory whose real/ holds a 128 x 128 crop of the bundled image."""
    (tmp_path / "real").mkdir()
    for name in ("dsb2018.tif", "dsb2018_masks.tif"):
        tifffile.imwrite(tmp_path / "real" / name, tifffile.imread(DSB_DIR / name)[:128, :128])
    return tmp_path


@pytest.mark.slow
def test_the_whole_chain_in_its_short_form(project):
    def cs(*args):
        return ok(run_cellsynth(*args, cwd=project))

    out = cs("simulate", "hela", "-n", "2", *TINY_SIM)
    assert "-o sim/ (default)" in out.stderr
    assert sorted(p.name for p in (project / "sim").iterdir()) == [
        "hela_0000.zarr",
        "hela_0001.zarr",
    ]

    out = cs("train", "--data", "real/", *TINY_TRAIN, "--json")
    run = project / json.loads(out.stdout)["run"]
    assert run.parent == project / "runs" and run.name.startswith("real-")
    latest = project / "runs" / "latest"
    assert latest.is_symlink() and latest.resolve() == run.resolve()
    assert (latest / "checkpoint.pt").is_file()

    out = cs("train", "--resume", "--steps", "6", "--json")  # continues runs/latest
    assert json.loads(out.stdout)["step"] == 6 and "-o runs/latest/ (default)" in out.stderr

    out = cs("noise-analysis", "--t", "0,500,1000")  # real/ with its own masks as sketches
    assert out.stdout.strip() in ("500", "1000", "None")

    out = cs("synthesize", "--t-start", "100", "--steps", "2")
    for default in ("--model runs/latest/", "--sketches sim/", "-o synth/"):
        assert f"{default} (default)" in out.stderr
    made = io.read_volume(project / "synth" / "hela_0000.zarr")
    simulated = io.read_volume(project / "sim" / "hela_0000.zarr")
    np.testing.assert_array_equal(made.masks, simulated.masks)
    assert made.provenance["model"].endswith("checkpoint.pt")

    out = cs("evaluate", "--json")  # synthetic names do not pair with real/: set-level
    report = json.loads(out.stdout)
    assert report["mode"] == "unpaired" and report["n_pred"] == 2 and report["n_ref"] == 1
    assert {s["name"] for s in report["scores"]} >= {"intensity_kld", "texture_kld"}

    cs("segment", "train", "--epochs", "1", "--bsize", "64", "--batch", "2")
    assert (project / "seg" / "segmenter.json").is_file()
    cs("segment", "predict")
    assert io.read_volume(project / "pred" / "dsb2018.zarr").masks is not None
    out = cs("segment", "score", "--json")
    assert json.loads(out.stdout)["volumes"][0]["name"] == "dsb2018"

    cs("export", "synth/")
    assert (project / "synth-tiff" / "hela_0000_masks.tif").is_file()


def test_a_missing_default_input_is_named(tmp_path):
    result = run_cellsynth("synthesize", "--t-start", "600", cwd=tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "--model not given" in line and "runs/latest" in line and "pass --model" in line
    assert not any(tmp_path.iterdir())


def test_train_defaults_need_real_data(tmp_path):
    result = run_cellsynth("train", cwd=tmp_path)
    assert result.returncode == 2 and "--data not given" in result.stderr
    assert "real/" in result.stderr and not (tmp_path / "runs").exists()


def test_new_run_dirs_are_named_by_data_and_time_and_claimed(tmp_path):
    now = datetime(2026, 11, 25, 13, 5, 9)
    first = workdir.new_run_dir(tmp_path / "real", root=tmp_path, now=now)
    assert first == tmp_path / "runs" / "real-20261125-130509" and first.is_dir()
    second = workdir.new_run_dir(tmp_path / "real/", root=tmp_path, now=now)
    assert second.name == "real-20261125-130509-2"  # same second: never share a run
    assert workdir.new_run_dir(tmp_path / "img.tif", root=tmp_path, now=now).name.startswith("img-")


def test_a_refused_train_leaves_runs_latest_alone(tmp_path):
    """`train -o` into a finished run is refused (exit 2) and runs/latest does not move."""
    (tmp_path / "real").mkdir()
    for name in ("dsb2018.tif",):
        tifffile.imwrite(tmp_path / "real" / name, tifffile.imread(DSB_DIR / name)[:64, :64])
    args = ["--patch", "32,32", "--channels", "8,16", "--batch", "2", "--steps", "2"]
    ok(run_cellsynth("train", "-o", "runs/old", *args, cwd=tmp_path))
    ok(run_cellsynth("train", *args, cwd=tmp_path))
    latest = tmp_path / "runs" / "latest"
    newest = latest.resolve()
    assert newest.name.startswith("real-")
    refused = run_cellsynth("train", "-o", "runs/old", *args, cwd=tmp_path)
    assert refused.returncode == 2 and "--resume or --overwrite" in refused.stderr
    assert latest.resolve() == newest
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "latest",
        "old",
        newest.name,
    ]


def test_latest_link_is_replaced_atomically_and_never_a_real_dir(tmp_path):
    runs = tmp_path / "runs"
    (runs / "a").mkdir(parents=True)
    (runs / "b").mkdir()
    link = workdir.point_latest(runs / "a")
    assert os.readlink(link) == "a"  # relative: the project directory can move
    workdir.point_latest(runs / "b")
    assert link.resolve() == (runs / "b").resolve()
    assert sorted(p.name for p in runs.iterdir()) == ["a", "b", "latest"]  # no temporaries
    other = tmp_path / "other" / "runs"
    (other / "latest").mkdir(parents=True)
    (other / "c").mkdir()
    with pytest.raises(FileExistsError):
        workdir.point_latest(other / "c")
    assert (other / "latest").is_dir() and not (other / "latest").is_symlink()
