"""Set-level realism (evaluate when nothing pairs) and the LoG nucleus detector."""

import json
import warnings

import numpy as np
import pytest
import tifffile
from conftest import DSB_DIR, run
from scipy import ndimage

from cellsynth_cli.io.intensity import robust_range, to_unit
from cellsynth_cli.measure.detect import detect_nuclei
from cellsynth_cli.measure.realism import compare_sets


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
    for name in ("intensity_kld", "intensity_bhattacharyya"):
        assert scores[name]["value"] > 3 * scores[name]["floor"], scores[name]
    # the nuclei's brightness: a KS of 0.85 (nearly every nucleus brighter), against a floor
    # of ~0.3 from the image's halves (~29 nuclei each: one nucleus moves it by 0.03, so the
    # ratio is 2.75-3.05 as the detector changes by a nucleus)
    brightness = scores["brightness_ks"]
    assert brightness["value"] > 0.7 and brightness["ratio"] > 2, brightness


def _blob_images(directory, n, rng, blur=0.0):
    """N images of random bright discs with a random gain each (between-volume variation)."""
    directory.mkdir()
    yy, xx = np.ogrid[:96, :96]
    for i in range(n):
        image = np.zeros((96, 96), np.float32)
        for _ in range(rng.integers(8, 14)):
            cy, cx = rng.integers(8, 88, 2)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(4, 8) ** 2] = rng.uniform(0.4, 1)
        image = ndimage.gaussian_filter(image, 1.0 + blur) * rng.uniform(0.7, 1.3)
        image += rng.normal(0, 0.05, image.shape).astype(np.float32)
        tifffile.imwrite(directory / f"v{i}.tif", image)
    return directory


def test_the_floor_is_calibrated_on_a_set_of_volumes(tmp_path):
    """A set drawn from the real set's own distribution scores about the floor (ratio ~ 1,
    not far below it as an unmatched comparison would), a blurred one far above."""
    rng = np.random.default_rng(0)
    real = _blob_images(tmp_path / "real", 6, rng)
    same = scores_of(compare_sets(_blob_images(tmp_path / "same", 6, rng), real))
    blurred = scores_of(compare_sets(_blob_images(tmp_path / "blur", 6, rng, blur=1.5), real))
    for name in ("intensity_kld", "gradient_kld", "texture_kld", "radius_ks", "brightness_ks"):
        assert 0.4 < same[name]["ratio"] < 2.5, (name, same[name])
    for name in ("gradient_kld", "texture_kld"):
        assert blurred[name]["ratio"] > 4, (name, blurred[name])
        assert blurred[name]["value"] > 4 * same[name]["value"]


def test_no_nuclei_in_the_synthetic_set_is_the_largest_object_distance(tmp_path):
    blank = image_set(tmp_path, "blank", np.zeros((128, 128), np.float32))
    scores = scores_of(compare_sets(blank, DSB_DIR))
    assert scores["radius_ks"]["value"] == 1.0 and scores["brightness_ks"]["value"] == 1.0
    assert scores["density_log_ratio"]["ratio"] > 10


def test_cli_unpaired_json_and_csv(tmp_path, real_image):
    """Also: no numpy warning reaches the user's terminal (a noisy image's detector meets
    seeds without a cell, whose mean is 0 / 0 and is replaced)."""
    noisy = real_image + np.random.default_rng(0).normal(0, 20, real_image.shape)
    pred = image_set(tmp_path, "noisy", noisy)
    csv_path = tmp_path / "realism.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        result = run(
            *[
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
    again = run("evaluate", "--pred", pred, "--ref", DSB_DIR, "--csv", csv_path)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert csv_path.read_text().splitlines() == rows  # untouched


def test_unpaired_flag_compares_sets_even_when_names_pair(tmp_path):
    result = run(
        *[
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


@pytest.mark.parametrize("z_step", [1.0, 4.0, 10.0])
def test_detector_in_noisy_anisotropic_3d(z_step):
    """Six balls of radius 8 (in-plane voxels) sampled with z z_step times coarser, in noise:
    found once each, with their radius (a mean-sigma LoG finds hundreds of noise blobs)."""
    depth = int(round(64 / z_step))
    shape = (depth, 128, 128)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centres = [(depth // 2, cy, cx) for cy in (30, 90) for cx in (25, 64, 103)]
    image = np.zeros(shape, np.float32)
    for cz, cy, cx in centres:
        image[((z - cz) * z_step) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= 8.0**2] = 0.8
    image += np.random.default_rng(1).normal(0, 0.05, shape).astype(np.float32)
    found = detect_nuclei(image, voxel_size=(0.5 * z_step, 0.5, 0.5))
    assert len(found) == 6
    assert sorted(map(tuple, found.centres[:, 1:])) == sorted((c[1], c[2]) for c in centres)
    assert np.all(np.abs(found.equivalent_radius - 8.0) < 0.15 * 8.0)
    # round: the z semi-axis is measured from each region (one or two slices at z_step 10)
    np.testing.assert_allclose(found.radii[:, 0], found.equivalent_radius / z_step, rtol=0.2)
    np.testing.assert_allclose(found.brightness, 0.8, atol=0.1)


def test_detector_refuses_bad_images():
    from cellsynth_cli.errors import InputError

    with pytest.raises(InputError, match="NaN"):
        detect_nuclei(np.full((32, 32), np.nan))
    with pytest.raises(InputError, match="2D or 3D"):
        detect_nuclei(np.zeros(10))
