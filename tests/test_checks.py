"""The pipeline's label-free checks (pipeline/checks.py): a segmentation that agrees with the
fit passes them; one that splits nuclei or misses half of them is called out."""

import numpy as np
from scipy import ndimage

from cellsynth_cli import io
from cellsynth_cli.pipeline.checks import run_checks
from cellsynth_cli.simulate.fit import fit_nuclei


def nuclei_images(tmp_path, n=2, seed=0):
    """Discs of radius 9 on a noisy background (images only), and their true masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:160, :160]
    truth = {}
    for i in range(n):
        masks = np.zeros((160, 160), np.uint16)
        centres = [(20 + 40 * a, 20 + 40 * b) for a in range(4) for b in range(4)]
        for label, (cy, cx) in enumerate(centres, start=1):
            jitter = rng.integers(-4, 5, 2)
            masks[(yy - cy - jitter[0]) ** 2 + (xx - cx - jitter[1]) ** 2 <= 81] = label
        image = ndimage.gaussian_filter((masks > 0) * rng.uniform(0.5, 0.9), 1.0)
        image = (image + rng.normal(0.1, 0.02, image.shape)).astype(np.float32)
        io.write_volume(tmp_path / "real", io.Volume(name=f"v{i}", image=image))
        truth[f"v{i}"] = masks
    return tmp_path / "real", truth


def checked(tmp_path, data, predicted: dict, folder: str) -> dict[str, bool]:
    for name, masks in predicted.items():
        image = io.read_volume(io.volume_path(data, name)).image  # predict writes both
        io.write_volume(tmp_path / folder, io.Volume(name=name, image=image, masks=masks))
    estimates = fit_nuclei(data).estimates
    realism = [{"name": "radius_ks", "value": 0.5, "floor": 0.4, "ratio": 1.25}]
    return {c.name: c.ok for c in run_checks(data, tmp_path / folder, estimates, realism)}


def test_masks_that_agree_with_the_fit_pass_every_check(tmp_path):
    data, truth = nuclei_images(tmp_path)
    assert all(checked(tmp_path, data, truth, "pred").values())


def test_split_or_missed_nuclei_are_called_out(tmp_path):
    data, truth = nuclei_images(tmp_path)
    split = {}
    for name, masks in truth.items():
        halves = masks.astype(np.int32) * 2
        left = np.zeros(masks.shape, bool)
        for label, where in enumerate(ndimage.find_objects(masks), start=1):
            centre = (where[1].start + where[1].stop) // 2
            left[where[0], where[1].start : centre] |= (
                masks[where[0], where[1].start : centre] == label
            )
        split[name] = np.where(left, halves - 1, halves).astype(np.uint16)
    verdict = checked(tmp_path, data, split, "split")
    assert not verdict["segmented / fitted nuclei per image"]
    assert not verdict["segmented / fitted median radius"]
    assert verdict["bright foreground covered by the masks"]  # the pieces cover it all
    half = {name: np.where(masks % 2 == 0, masks, 0) for name, masks in truth.items()}
    verdict = checked(tmp_path, data, half, "half")
    assert not verdict["segmented / fitted nuclei per image"]
    assert not verdict["bright foreground covered by the masks"]
    assert verdict["segmented / fitted median radius"]


def test_a_segmenter_that_finds_nothing_is_one_plain_warning(tmp_path):
    data, truth = nuclei_images(tmp_path, n=1)
    nothing = {name: np.zeros_like(masks) for name, masks in truth.items()}
    verdict = checked(tmp_path, data, nothing, "nothing")
    assert verdict.pop("nuclei segmented per image") is False
    assert all(verdict.values()) and len(verdict) == 1  # the realism check stands
