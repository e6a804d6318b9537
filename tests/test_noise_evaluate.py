"""noise-analysis and evaluate through the CLI on the bundled real image."""

import json

import numpy as np
import pytest
import tifffile
from conftest import run

from cellsynth_cli import io
from cellsynth_cli.measure.evaluate import score_pair


@pytest.fixture(scope="module")
def from_labels(
    tmp_path_factory,
):
    from pathlib import Path

    out = tmp_path_factory.mktemp("fl")
    data = Path(__file__).parent.parent / "data" / "dsb2018"
    assert run("simulate", "from-labels", "--data", data, "-o", out, "--overwrite").exit_code == 0
    return out


def test_kld_curve_falls_with_t_and_recommends_t_start(from_labels, dsb_dir, tmp_path):
    result = run(
        "noise-analysis",
        "--images",
        dsb_dir,
        "--sketches",
        from_labels,
        "--t",
        "0,100,200,400,600,800,1000",
        "-o",
        tmp_path / "na",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    kld, bd = np.array(data["kld"]), np.array(data["bhattacharyya"])
    assert kld[0] > 1 and kld[-1] < 0.01  # different at t=0, alike at t=T
    assert np.all(np.diff(kld[:5]) < 0) and np.all(np.diff(bd[:5]) < 0)
    assert data["recommended_t_start"] in data["timesteps"]
    rec = data["timesteps"].index(data["recommended_t_start"])
    assert kld[rec] < data["kld_threshold"] and kld[rec - 1] >= data["kld_threshold"]
    assert (tmp_path / "na" / "noise_analysis.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((tmp_path / "na" / "noise_analysis.json").read_text())
    assert saved["kld"] == data["kld"]


def test_noise_analysis_identical_sets_have_zero_distance(tmp_path):
    # an image in [0, 1] whose 1st / 99.8th percentiles are exactly 0 and 1, so the real
    # normalisation is the identity and "images" and "sketches" are the same set
    rng = np.random.default_rng(0)
    values = rng.random((96, 96)).astype(np.float32)
    values[:8] = 0.0
    values[-8:] = 1.0
    io.write_volume(tmp_path / "real", io.Volume(name="v", image=values))
    io.write_volume(
        tmp_path / "sk", io.Volume(name="v", sketch=values, masks=(values > 0.5).astype(np.uint16))
    )
    result = run(
        "noise-analysis",
        "--images",
        tmp_path / "real",
        "--sketches",
        tmp_path / "sk",
        "--t",
        "0,300",
        "--json",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kld"][0] == pytest.approx(0.0, abs=1e-9)
    assert data["bhattacharyya"][0] == pytest.approx(0.0, abs=1e-9)
    assert data["kld"][1] < 0.05  # independent noise draws of the same set


def test_noise_analysis_unpaired_sets(tmp_path, dsb_dir):
    # simulated sketches share no names with the real images: compared as two sets
    other = tmp_path / "other"
    assert (
        run(
            "simulate", "hela", "-n", 1, "-o", other, "--shape", "64,64", "--set", "radius=5,6"
        ).exit_code
        == 0
    )
    result = run("noise-analysis", "--images", dsb_dir, "--sketches", other, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["paired"] is False and data["backward"] == []
    assert data["kld"][0] > 1 and data["kld"][-1] < data["kld"][0] / 100


def test_evaluate_against_real(tmp_path, dsb_dir):
    image = tifffile.imread(dsb_dir / "dsb2018.tif").astype(np.float32)
    masks = tifffile.imread(dsb_dir / "dsb2018_masks.tif")
    pred = tmp_path / "pred"
    noisy = image + np.random.default_rng(0).normal(0, 5, image.shape).astype(np.float32)
    io.write_volume(pred, io.Volume(name="dsb2018", image=noisy, masks=masks))
    io.write_volume(pred, io.Volume(name="extra", image=noisy))
    result = run(
        "evaluate", "--pred", pred, "--ref", dsb_dir, "--json", "--csv", tmp_path / "s.csv"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["unpaired_pred"] == ["extra"]
    row = data["volumes"][0]
    assert row["name"] == "dsb2018" and 20 < row["psnr"] < 40 and 0.2 < row["ssim"] < 1
    assert data["summary"]["psnr"]["mean"] == pytest.approx(row["psnr"])
    assert "dsb2018" in (tmp_path / "s.csv").read_text()


def test_masked_evaluation_ignores_background():
    rng = np.random.default_rng(1)
    ref = rng.random((64, 64)) * 100
    labels = np.zeros((64, 64), np.uint16)
    labels[20:40, 20:40] = 1
    pred = ref.copy()
    pred[labels == 0] = rng.random(int((labels == 0).sum())) * 100  # garbage background
    masked = score_pair(pred, ref, labels=labels)
    unmasked = score_pair(pred, ref)
    assert masked["psnr"] == float("inf") and masked["mae"] == 0.0
    assert unmasked["psnr"] < 20


def test_evaluate_errors(tmp_path, dsb_dir):
    pred = tmp_path / "pred"
    io.write_volume(pred, io.Volume(name="dsb2018", image=np.zeros((10, 10), np.float32)))
    result = run("evaluate", "--pred", pred, "--ref", dsb_dir)
    assert result.exit_code == 2 and "shapes differ" in result.output
    other = tmp_path / "other"
    other.mkdir()
    tifffile.imwrite(other / "nope.tif", np.full((64, 64), np.nan, np.float32))
    result = run("evaluate", "--pred", other, "--ref", dsb_dir)  # nothing pairs: as sets
    assert result.exit_code == 2 and "nope" in result.output and "NaN" in result.output
    nan = tmp_path / "nan"
    nan.mkdir()
    bad = np.zeros((256, 512), np.float32)
    bad[0, 0] = np.nan
    tifffile.imwrite(nan / "dsb2018.tif", bad)
    result = run("evaluate", "--pred", nan, "--ref", dsb_dir)
    assert result.exit_code == 2 and "NaN" in result.output and "Traceback" not in result.output
