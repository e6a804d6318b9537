"""Set-level realism (evaluate when nothing pairs) and the LoG nucleus detector."""

import json

import numpy as np
import pytest
import tifffile
from conftest import DSB_DIR
from scipy import ndimage
from typer.testing import CliRunner

from cellsynth_cli.cli import app
from cellsynth_cli.detect import detect_nuclei
from cellsynth_cli.intensity import robust_range, to_unit
from cellsynth_cli.realism import compare_sets

runner = CliRunner()


@pytest.fixture(scope="module")
def real_image():
    return tifffile.imread(DSB_DIR / "dsb2018.tif")


def image_set(tmp_path, name, image):
    directory = tmp_path / name
    directory.mkdir()
    tifffile.imwrite(directory / f"{name}.tif", np.asarray(image, np.float32))
    return directory


def scores_of(result):
    return {s["name"]: s for s in result.scores}


def test_real_against_itself_scores_at_or_below_the_floor(tmp_path):
    same = image_set(tmp_path, "copy", tifffile.imread(DSB_DIR / "dsb2018.tif"))
    result = compare_sets(same, DSB_DIR)
    for s in result.scores:
        assert s["floor"] is not None and s["floor"] > 0, s  # two real halves do differ
        assert s["value"] <= s["floor"], s
    assert result.objects["pred"] == result.objects["ref"]


def test_a_blurred_copy_scores_worse_in_gradient_and_texture(tmp_path, real_image):
    blurred = ndimage.gaussian_filter(real_image.astype(np.float32), 2.0)
    scores = scores_of(compare_sets(image_set(tmp_path, "blur", blurred), DSB_DIR))
    for name in ("gradient_kld", "texture_kld", "texture_bhattacharyya"):
        assert scores[name]["value"] > 3 * scores[name]["floor"], scores[name]


def test_a_contrast_changed_copy_scores_worse_in_intensity(tmp_path, real_image):
    image = real_image.astype(np.float32)
    gamma = (image / image.max()) ** 0.5 * image.max()
    scores = scores_of(compare_sets(image_set(tmp_path, "gamma", gamma), DSB_DIR))
    for name in ("intensity_kld", "intensity_bhattacharyya", "brightness_ks"):
        assert scores[name]["value"] > 3 * scores[name]["floor"], scores[name]


def test_cli_unpaired_json_and_csv(tmp_path, real_image):
    noisy = real_image + np.random.default_rng(0).normal(0, 20, real_image.shape)
    pred = image_set(tmp_path, "noisy", noisy)
    csv_path = tmp_path / "realism.csv"
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--pred",
            str(pred),
            "--ref",
            str(DSB_DIR),
            "--json",
            "--csv",
            str(csv_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mode"] == "unpaired" and report["n_pred"] == 1
    texture = next(s for s in report["scores"] if s["name"] == "texture_kld")
    assert texture["ratio"] == pytest.approx(texture["value"] / texture["floor"])
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "distance,value,floor,ratio" and len(rows) == 1 + len(report["scores"])
    again = runner.invoke(
        app, ["evaluate", "--pred", str(pred), "--ref", str(DSB_DIR), "--csv", str(csv_path)]
    )
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert csv_path.read_text().splitlines() == rows  # untouched


def test_unpaired_flag_compares_sets_even_when_names_pair(tmp_path):
    result = runner.invoke(
        app,
        [
            "evaluate",
            "--pred",
            str(DSB_DIR),
            "--ref",
            str(DSB_DIR),
            "--unpaired",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["mode"] == "unpaired"


def test_detector_matches_the_real_masks(real_image):
    """Count and median radius of the LoG detections vs the curated masks (only the test
    looks at the masks)."""
    masks = tifffile.imread(DSB_DIR / "dsb2018_masks.tif")
    lo, hi = robust_range([real_image])
    found = detect_nuclei(to_unit(real_image, lo, hi))
    areas = np.bincount(masks.ravel())[1:]
    areas = areas[areas > 0]
    assert abs(len(found) - len(areas)) <= 0.2 * len(areas)
    true_radius = np.median(np.sqrt(areas / np.pi))
    assert abs(np.median(found.equivalent_radius) - true_radius) <= 0.2 * true_radius


def test_detector_in_anisotropic_3d():
    """Balls of radius 6 (in-plane voxels) sampled with z 3x coarser are found as such."""
    shape = (20, 96, 96)
    z, y, x = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    centres = [(10, 24, 24), (10, 24, 70), (10, 70, 48)]
    image = np.zeros(shape, np.float32)
    for cz, cy, cx in centres:
        inside = ((z - cz) * 3.0) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= 6.0**2
        image[inside] = 0.8
    found = detect_nuclei(ndimage.gaussian_filter(image, (0.3, 1, 1)), voxel_size=(3.0, 1, 1))
    assert len(found) == 3
    assert sorted(map(tuple, found.centres[:, 1:])) == sorted((c[1], c[2]) for c in centres)
    assert np.all(np.abs(found.equivalent_radius - 6.0) < 0.25 * 6.0)
    np.testing.assert_allclose(found.brightness, 0.8, atol=0.15)


def test_detector_refuses_bad_images():
    from cellsynth_cli.errors import InputError

    with pytest.raises(InputError, match="NaN"):
        detect_nuclei(np.full((32, 32), np.nan))
    with pytest.raises(InputError, match="2D or 3D"):
        detect_nuclei(np.zeros(10))
