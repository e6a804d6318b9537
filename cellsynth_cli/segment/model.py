"""A trained segmenter folder (`segment train`): its files, loading it once per process, and
segmenting one image with it (3D: Cellpose's 3D mode with the voxel anisotropy, or 2D masks
stitched across z)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth_cli import io
from cellsynth_cli.defaults import DEVICE
from cellsynth_cli.errors import InputError, check_choice
from cellsynth_cli.runtime import model_cache
from cellsynth_cli.runtime.device import pick_device
from cellsynth_cli.segment import brightness
from cellsynth_cli.segment.cellpose_compat import cellpose_modules
from cellsynth_cli.segment.config import MODE, MODES

MODEL_FILE = "cellpose_model"
CONFIG_FILE = "segmenter.json"
DIAM_MEAN = 30.0  # cellpose rescales every training image so cells have this diameter
STITCH_THRESHOLD = 0.5  # IoU that joins 2D masks of neighbouring z slices into one cell


def use_gpu(device: str) -> bool:
    """--device auto | cpu | cuda as cellpose's gpu flag (cuda without a GPU is bad input)."""
    return pick_device(device).type == "cuda"


def segmenter_config(model_dir: Path) -> dict:
    """The configuration of a `segment train` folder (checked without loading cellpose)."""
    config_path = Path(model_dir) / CONFIG_FILE
    if not config_path.is_file() or not (Path(model_dir) / MODEL_FILE).is_file():
        raise InputError(
            f"{model_dir}: not a segmentation model (train one with `cellsynth segment train`)"
        )
    try:
        return json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{config_path}: unreadable ({exc})") from None


def load_segmenter(model_dir: Path, device: str = DEVICE) -> tuple[Any, dict]:
    config = segmenter_config(model_dir)
    gpu = use_gpu(device)
    models, _ = cellpose_modules(Path(model_dir))
    model = models.CellposeModel(gpu=gpu, pretrained_model=str(Path(model_dir) / MODEL_FILE))
    return model, config


def segment(
    model: Any,
    config: dict,
    image: np.ndarray,
    mode: str = MODE,
    anisotropy: float = 1.0,
    min_size_fraction: float = 0.0,
    match_brightness: bool = False,
) -> tuple[np.ndarray, float]:
    """Instance masks of a 2D or 3D image (3D: mode "3d" or "stitch", see MODES), without
    the objects smaller than MIN_SIZE_FRACTION of a typical cell (min_cell_size), and the
    factor the image was dimmed by: with MATCH_BRIGHTNESS, cells brighter than the
    segmenter's training nuclei are redrawn from the image dimmed (brightness.py; 1: none)."""
    check_choice(mode, MODES, "--mode")
    kwargs: dict[str, Any] = dict(channels=[0, 0], diameter=config["diameter"])
    if image.ndim == 3:
        # without z_axis cellpose takes the shortest axis of a stack over 5 planes for z
        kwargs["z_axis"] = 0
        if mode == "3d":
            kwargs.update(do_3D=True, anisotropy=anisotropy)
        else:
            kwargs.update(do_3D=False, stitch_threshold=STITCH_THRESHOLD)
    smallest = min_cell_size(config["diameter"], image.ndim, anisotropy, min_size_fraction)
    masks = _without_small(_eval(model, image.astype(np.float32), kwargs), smallest)
    trained_top = config.get(brightness.CONFIG_KEY)
    if not (match_brightness and trained_top):
        return masks, 1.0
    from cellsynth_cli.segment.background import normalize_like_cellpose

    normalised = normalize_like_cellpose(image)
    bright = brightness.bright_cells(normalised, masks, trained_top)
    dimming = brightness.dimming(normalised, masks, trained_top) if bright.size else 1.0
    if dimming > 1.0:
        # normalised as cellpose would, then dimmed: cellpose must not normalise it again
        dimmed = _eval(model, normalised / dimming, {**kwargs, "normalize": False})
        masks = brightness.redrawn(masks, _without_small(dimmed, smallest), bright)
    return masks, dimming


def _eval(model: Any, image: np.ndarray, kwargs: dict) -> np.ndarray:
    masks, _, _ = model.eval(image, **kwargs)
    return np.asarray(masks).astype(np.uint32)


def _without_small(masks: np.ndarray, smallest: int) -> np.ndarray:
    """MASKS without objects of fewer than SMALLEST pixels, relabelled 1..n (1: keep all)."""
    if smallest <= 1:
        return masks
    from skimage.segmentation import relabel_sequential

    sizes = np.bincount(masks.ravel())
    small = np.flatnonzero(sizes < smallest)
    masks[np.isin(masks, small[small > 0])] = 0
    return relabel_sequential(masks)[0]


def min_cell_size(diameter: float, ndim: int, anisotropy: float, fraction: float) -> int:
    """FRACTION of the pixels (2D) or voxels (3D, z steps ANISOTROPY times the x step) of a
    disc or ball of DIAMETER (in x pixels): the smallest object prediction keeps."""
    if ndim == 2:
        typical = np.pi / 4 * diameter**2
    else:
        typical = np.pi / 6 * diameter**3 / anisotropy
    return max(1, int(round(fraction * typical)))


def cached(model_dir: Path, checksum: str, device: str) -> tuple[Any, dict]:
    """The segmenter of MODEL_DIR, loaded once per process (a Dask worker keeps it between
    tasks); a folder whose weights changed since the run began is refused."""

    def load() -> tuple[Any, dict]:
        if io.file_checksum(Path(model_dir) / MODEL_FILE) != checksum:
            raise InputError(f"{model_dir} changed while segmenting (checksum differs)")
        return load_segmenter(model_dir, device)

    key = ("cellpose", str(Path(model_dir).resolve()), checksum, device)
    return model_cache.cached(key, load)


def checked_for_a_run(model_dir: Path) -> str:
    """Before a run's work: a bad model folder is reported, models loaded earlier in this
    process are forgotten (the folder is loaded as it is now, once), and the checksum its
    jobs carry is returned (see `cached`)."""
    segmenter_config(model_dir)
    checksum = io.file_checksum(Path(model_dir) / MODEL_FILE)
    clear_cache()
    return checksum


def clear_cache() -> None:
    """Forget loaded models: the next `cached` call loads the folder as it is now."""
    model_cache.clear()
