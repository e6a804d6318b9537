"""Tiny DDPMs train, checkpoint, resume exactly and synthesize through the CLI."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import run, run_cellsynth

from cellsynth_cli import io
from cellsynth_cli.ddpm.config import TrainConfig
from cellsynth_cli.ddpm.train import train
from cellsynth_cli.errors import InputError

TINY = ["--channels", "8,16", "--batch", "4", "--lr", "2e-3"]


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("run2d")
    data = Path(__file__).parent.parent / "data" / "dsb2018"
    result = run(
        "train",
        "--data",
        data,
        "-o",
        out,
        "--patch",
        "32,32",
        "--steps",
        60,
        "--json",
        "--checkpoint-every",
        25,
        *TINY,
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@pytest.fixture(scope="module")
def sketches2d(tmp_path_factory):
    out = tmp_path_factory.mktemp("sk2d")
    # 70 x 90 is not a multiple of the network's divisor: synthesis must pad and crop
    result = run(
        "simulate",
        "hela",
        "-n",
        2,
        "-o",
        out,
        "--shape",
        "70,90",
        "--set",
        "radius=6,9",
        "--set",
        "n_cells=5,10",
    )
    assert result.exit_code == 0, result.output
    return out


def test_training_writes_a_self_describing_run_and_loss_falls(run2d, margin):
    out, report = run2d
    assert report["step"] == 60
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 60 and state["dims"] == 2
    assert state["unet"]["channels"] == [8, 16]
    assert state["normalization"]["high"] > state["normalization"]["low"]
    assert {"model", "ema", "optimizer", "generator", "config"} <= set(state)
    assert json.loads((out / "config.json").read_text())["dims"] == 2
    losses = np.loadtxt(out / "loss.csv", delimiter=",", skiprows=1)[:, 1]
    assert len(losses) == 60
    # untrained it predicts no noise (ratio 1); trained it halves the loss: 0.48-0.52 over
    # seeds 0-5, the same to 3 digits on AVX-512, AVX2 and plain x86-64 kernels
    margin("loss last 15 / first 5 steps", losses[-15:].mean() / losses[:5].mean(), below=0.75)
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_exactly(tmp_path, dsb_dir):
    base = dict(
        data=str(dsb_dir),
        dims=2,
        patch=(32, 32),
        batch=2,
        lr=1e-3,
        channels=(8, 16),
        checkpoint_every=1000,
        seed=4,
    )
    whole = train(TrainConfig(**base, steps=8), tmp_path / "whole")
    train(TrainConfig(**base, steps=4), tmp_path / "split")
    resumed = train(TrainConfig(**base, steps=8), tmp_path / "split", resume=True)
    assert resumed.step == 8
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=0, atol=0)
    assert whole.losses[4:] == resumed.losses
    rows = (tmp_path / "split" / "loss.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 8


def test_time_limit_stops_cleanly(tmp_path, dsb_dir):
    result = run(
        "train",
        "--data",
        dsb_dir,
        "-o",
        tmp_path / "r",
        "--patch",
        "32,32",
        "--steps",
        10_000,
        "--time-limit",
        "1",
        "--json",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stopped_by_time_limit"] and 0 < report["step"] < 10_000
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["step"] == report["step"]


def test_synthesize_keeps_masks_and_is_reproducible(run2d, sketches2d, tmp_path):
    model, _ = run2d
    args = [
        "synthesize",
        "--model",
        model,
        "--sketches",
        sketches2d,
        "--t-start",
        100,
        "--steps",
        5,
        "--tile",
        "32,32",
        "--overlap",
        "8,8",
        "--batch",
        3,
    ]
    result = run(*args, "-o", tmp_path / "a", "--json")
    assert result.exit_code == 0, result.output
    assert run(*args, "-o", tmp_path / "b").exit_code == 0
    for pa, pb, ps in zip(
        io.list_volumes(tmp_path / "a"),
        io.list_volumes(tmp_path / "b"),
        io.list_volumes(sketches2d),
        strict=True,
    ):
        a, b, s = io.read_volume(pa), io.read_volume(pb), io.read_volume(ps)
        assert a.image.shape == (70, 90) and np.isfinite(a.image).all()
        np.testing.assert_array_equal(a.masks, s.masks)
        np.testing.assert_array_equal(a.image, b.image)
        assert a.provenance["stage"] == "synthesize" and a.provenance["t_start"] == 100
        # 70x90 padded to 72x96 (or 80x96): 3 x 4 tiles of 32 at overlap >= 8
        assert a.provenance["tile"] == [32, 32] and a.provenance["n_tiles"] == 12
        assert a.provenance["precision"] in ("fp32", "bf16")
        assert len(a.provenance["model_checksum"]) == 64
    # other seed, other sample
    assert run(*args, "-o", tmp_path / "c", "--seed", 1).exit_code == 0
    c = io.read_volume(io.list_volumes(tmp_path / "c")[0])
    assert not np.array_equal(c.image, io.read_volume(io.list_volumes(tmp_path / "a")[0]).image)


def test_synthesize_takes_the_default_respaced_steps_and_every_step_on_request(
    run2d, sketches2d, tmp_path
):
    from cellsynth_cli.diffusion.defaults import SAMPLE_STEPS

    model, _ = run2d
    args = ["synthesize", "--model", model, "--sketches", sketches2d, "--t-start"]
    ran = {"default": [], "every": ["--every-step"]}
    for name, extra in ran.items():
        assert run(*args, SAMPLE_STEPS + 10, "-o", tmp_path / name, *extra).exit_code == 0
    made = {n: io.read_provenance(io.list_volumes(tmp_path / n)[0])["steps"] for n in ran}
    assert made == {"default": SAMPLE_STEPS, "every": SAMPLE_STEPS + 10}
    # below the default, the default is every step (not an error about --steps)
    assert run(*args, 7, "-o", tmp_path / "low").exit_code == 0
    assert io.read_provenance(io.list_volumes(tmp_path / "low")[0])["steps"] == 7


def test_synthesize_resume_skips_finished(run2d, sketches2d, tmp_path):
    model, _ = run2d
    args = [
        "synthesize",
        "--model",
        model,
        "--sketches",
        sketches2d,
        "-o",
        tmp_path / "o",
        "--t-start",
        20,
        "--steps",
        2,
    ]
    assert run(*args).exit_code == 0
    first = io.list_volumes(tmp_path / "o")[0]
    stamp = (first / "zarr.json").stat().st_mtime_ns
    refused = run(*args)
    assert refused.exit_code == 2 and "--resume" in refused.output
    resumed = run(*args, "--resume", "--json")
    assert resumed.exit_code == 0
    assert all(v.get("skipped") for v in json.loads(resumed.stdout)["volumes"])
    assert (first / "zarr.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--t-start", "0"], "--t-start"),
        (["--t-start", "1001"], "--t-start"),
        (["--t-start", "10", "--steps", "20"], "--steps"),
        (["--steps", "0"], "--steps"),
        (["--sampler", "euler"], "--sampler"),
        (["--precision", "fp8"], "--precision"),
        (["--steps", "5", "--every-step"], "--every-step"),
        (["--guidance-share", "1.5"], "--guidance-share"),
    ],
)
def test_synthesize_bad_options(run2d, sketches2d, tmp_path, extra, message):
    model, _ = run2d
    result = run(
        "synthesize", "--model", model, "--sketches", sketches2d, "-o", tmp_path / "o", *extra
    )
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_2d_model_refuses_3d_sketch(run2d, tmp_path):
    model, _ = run2d
    sk = tmp_path / "sk3d"
    assert (
        run(
            "simulate",
            "celegans",
            "-n",
            1,
            "-o",
            sk,
            "--shape",
            "8,32,32",
            "--set",
            "radius=4,5",
            "--set",
            "n_cells=3,5",
        ).exit_code
        == 0
    )
    result = run(
        "synthesize",
        "--model",
        model,
        "--sketches",
        sk,
        "-o",
        tmp_path / "o",
        "--t-start",
        10,
        "--steps",
        2,
    )
    assert result.exit_code == 2
    assert "2D model" in result.output and "3D" in result.output
    assert not io.list_volumes(tmp_path / "o") if (tmp_path / "o").exists() else True


def test_corrupt_and_foreign_checkpoints(sketches2d, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "checkpoint.pt").write_bytes(b"garbage" * 100)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign / "checkpoint.pt")
    for bad, message in (
        (corrupt, "not a readable checkpoint"),
        (foreign, "not a cellsynth DDPM checkpoint"),
        (tmp_path / "missing", "no checkpoint"),
    ):
        result = run("synthesize", "--model", bad, "--sketches", sketches2d, "-o", tmp_path / "o")
        assert result.exit_code == 2, result.output
        assert message in result.output


def test_train_bad_input(tmp_path, dsb_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("train", "--data", empty, "-o", tmp_path / "r", "--steps", 1)
    assert result.exit_code == 2 and "Traceback" not in result.output
    nan_dir = tmp_path / "nan"
    nan_dir.mkdir()
    image = np.ones((40, 40), np.float32)
    image[3, 3] = np.nan
    tifffile.imwrite(nan_dir / "a.tif", image)
    result = run("train", "--data", nan_dir, "-o", tmp_path / "r2", "--steps", 1)
    assert result.exit_code == 2 and "NaN" in result.output
    result = run("train", "--data", dsb_dir, "-o", tmp_path / "r3", "--dims", 3, "--steps", 1)
    assert result.exit_code == 2 and "3D model" in result.output


def test_train_on_an_image_smaller_than_the_patch_is_refused(tmp_path):
    """The real `cellsynth`: a 4x4 image used to be reflection-padded to 256x256 and trained
    on silently. Now one line naming the image, the patch and the down-sampling; no run."""
    data = tmp_path / "data"
    data.mkdir()
    tifffile.imwrite(data / "tiny.tif", np.arange(16, dtype=np.float32).reshape(4, 4))
    result = run_cellsynth("train", "--data", data, "-o", tmp_path / "run", "--steps", 2)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert lines == [
        f"error: --data {data}: image tiny is 4x4, smaller than the patch 256x256 and than "
        "the network's down-sampling 8x8 (a patch is a multiple of it); train on larger images"
    ]
    assert not (tmp_path / "run").exists()


def test_refusal_names_a_patch_that_fits_and_it_trains(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    tifffile.imwrite(data / "wide.tif", rng.normal(100, 10, (50, 90)).astype(np.float32))
    tifffile.imwrite(data / "low.tif", rng.normal(100, 10, (70, 37)).astype(np.float32))
    config = dict(data=str(data), dims=2, steps=1, batch=1, channels=(8, 16))  # down-samples 2
    with pytest.raises(InputError, match="image low is 70x37, smaller than the patch 64x64") as e:
        train(TrainConfig(**config, patch=(64, 64)), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    fits = re.search(r"--patch (\d+),(\d+) or smaller \(multiples of 2x2", str(e.value))
    assert fits is not None, str(e.value)
    patch = (int(fits[1]), int(fits[2]))
    assert patch == (50, 36)  # the smallest height and width, rounded down to multiples of 2
    assert train(TrainConfig(**config, patch=patch), tmp_path / "run").step == 1


def test_a_2d_model_on_3d_data_compares_the_patch_with_the_slices(tmp_path):
    data = tmp_path / "data"
    stack = np.random.default_rng(0).normal(100, 10, (3, 40, 40)).astype(np.float32)
    io.write_volume(data, io.Volume("stack", image=stack))  # 3 slices: fewer than 32 rows
    config = TrainConfig(data=str(data), dims=2, patch=(32, 32), steps=1, channels=(8, 16))
    assert train(config, tmp_path / "run").step == 1


def test_tiny_3d_model_trains_and_synthesizes(tmp_path):
    rng = np.random.default_rng(0)
    real = tmp_path / "real3d"
    real.mkdir()
    image = rng.normal(100, 10, (16, 40, 40)).astype(np.float32)
    image[4:10, 10:25, 10:25] += 200
    tifffile.imwrite(real / "vol.tif", image)
    result = run(
        "train",
        "--data",
        real,
        "-o",
        tmp_path / "run",
        "--patch",
        "8,16,16",
        "--steps",
        20,
        "--json",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["dims"] == 3
    sk = tmp_path / "sk"
    assert (
        run(
            "simulate",
            "celegans",
            "-n",
            1,
            "-o",
            sk,
            "--shape",
            "10,24,36",
            "--set",
            "radius=4,5",
            "--set",
            "n_cells=3,5",
        ).exit_code
        == 0
    )
    result = run(
        "synthesize",
        "--model",
        tmp_path / "run",
        "--sketches",
        sk,
        "-o",
        tmp_path / "syn",
        "--t-start",
        20,
        "--steps",
        3,
    )
    assert result.exit_code == 0, result.output
    out = io.read_volume(io.list_volumes(tmp_path / "syn")[0])
    assert out.image.shape == (10, 24, 36) and np.isfinite(out.image).all()


def test_bf16_precision_on_cpu_stays_close_to_fp32(run2d, sketches2d, tmp_path, margin):
    model, _ = run2d
    args = [
        "synthesize",
        "--model",
        model,
        "--sketches",
        sketches2d,
        "--t-start",
        30,
        "--steps",
        3,
        "--sampler",
        "ddim",
    ]
    assert run(*args, "-o", tmp_path / "fp32", "--precision", "fp32").exit_code == 0
    result = run(*args, "-o", tmp_path / "bf16", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    a = io.read_volume(io.list_volumes(tmp_path / "fp32")[0]).image
    b = io.read_volume(io.list_volumes(tmp_path / "bf16")[0]).image
    spread = float(a.max() - a.min())
    assert np.isfinite(b).all()
    margin("bf16 - fp32, max / spread", np.abs(a - b).max() / spread, below=0.1)


def test_anisotropic_3d_model_keeps_z_and_synthesizes_without_z_padding(tmp_path):
    """z voxels 4x coarser: the checkpoint records no z down-sampling at the first level and a
    35-slice sketch is synthesized in one tile of 35 slices (not padded to a multiple)."""
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (12, 32, 32)).astype(np.float32)
    image[3:8, 8:20, 8:20] += 200
    io.write_volume(tmp_path / "real", io.Volume(name="v", image=image, voxel_size=(2.0, 0.5, 0.5)))
    result = run(
        "train",
        "--data",
        tmp_path / "real",
        "-o",
        tmp_path / "run",
        "--patch",
        "5,16,16",
        "--steps",
        3,
        "--json",
        *TINY,
    )
    assert result.exit_code == 0, result.output
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["unet"]["down_factors"] == [[1, 2, 2]]
    sketch = np.zeros((35, 24, 24), np.float32)
    sketch[10:20, 5:15, 5:15] = 0.8
    masks = (sketch > 0).astype(np.uint16)
    io.write_volume(tmp_path / "sk", io.Volume(name="s", sketch=sketch, masks=masks))
    result = run(
        "synthesize",
        "--model",
        tmp_path / "run",
        "--sketches",
        tmp_path / "sk",
        "-o",
        tmp_path / "out",
        "--t-start",
        50,
        "--steps",
        2,
        "--json",
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)["volumes"][0]
    assert plan["tile"] == [35, 24, 24] and plan["n_tiles"] == 1
    assert io.read_volume(tmp_path / "out" / "s.zarr").image.shape == (35, 24, 24)
