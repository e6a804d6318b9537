"""measure/outline.py: where nuclei end against where their masks end."""

import numpy as np
from scipy import ndimage

from cellsynth_cli import io
from cellsynth_cli.measure.outline import outline_profile


def discs(tmp_path, grow: int, name: str):
    """Blurred discs of radius 10 with masks GROW px larger (negative: smaller), 2D and 3D."""
    yy, xx = np.mgrid[:128, :128]
    inside = np.zeros((128, 128), bool)
    masks = np.zeros((128, 128), np.uint16)
    for label, (cy, cx) in enumerate([(32, 32), (32, 96), (96, 32), (96, 96)], start=1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 100
        inside |= disc
        grown = ndimage.binary_dilation(disc, iterations=grow) if grow > 0 else disc
        grown = ndimage.binary_erosion(disc, iterations=-grow) if grow < 0 else grown
        masks[grown] = label
    image = ndimage.gaussian_filter(inside * 0.8, 1.0) + 0.1
    folder = tmp_path / name
    io.write_volume(folder, io.Volume(name="d2", image=image.astype(np.float32), masks=masks))
    stack = np.stack([image] * 3).astype(np.float32)
    io.write_volume(folder, io.Volume(name="d3", image=stack, masks=np.stack([masks] * 3)))
    return folder


def test_the_crossing_says_how_far_nuclei_spill_past_their_masks(tmp_path):
    exact = outline_profile(discs(tmp_path, 0, "exact"))
    assert abs(exact.crossing) < 0.5 and exact.halo < 0.2, exact.to_dict()
    tight = outline_profile(discs(tmp_path, -2, "tight"))
    assert 1.5 < tight.crossing < 2.5 and tight.halo > 0.5, tight.to_dict()
    loose = outline_profile(discs(tmp_path, 2, "loose"))
    assert -2.5 < loose.crossing < -1.5 and loose.halo < 0.05, loose.to_dict()
