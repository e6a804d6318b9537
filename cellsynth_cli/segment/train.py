"""`segment train`: Cellpose 3 trained from scratch on images + masks (nothing is downloaded:
the network is built untrained, pretrained_model=False)."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth_cli import io
from cellsynth_cli.defaults import DEVICE
from cellsynth_cli.errors import InputError, check_choice
from cellsynth_cli.segment import brightness
from cellsynth_cli.segment.cellpose_compat import (
    EpochLog,
    cellpose_modules,
    empty_masks_allowed,
    flows_with_ignored,
    ignore_aware_loss,
    random_brightness,
)
from cellsynth_cli.segment.config import TRAINING, check_brightness_jitter
from cellsynth_cli.segment.model import CONFIG_FILE, DIAM_MEAN, MODEL_FILE, use_gpu
from cellsynth_cli.segment.slices import (
    SLICES,
    TrainingSlices,
    median_diameter,
    training_slices,
)


def train_segmenter(
    data: Path,
    out: Path,
    epochs: int = TRAINING.epochs,
    learning_rate: float = TRAINING.learning_rate,
    bsize: int = TRAINING.bsize,
    batch: int = TRAINING.batch,
    images_per_epoch: int | None = None,
    diameter: float | None = None,
    slices: str = TRAINING.slices,
    overwrite: bool = False,
    seed: int = TRAINING.seed,
    device: str = DEVICE,
    on_epoch: Callable[[int, float], None] | None = None,
    background: Path | None = None,
    n_background_crops: int = TRAINING.background_crops,
    brightness_jitter: float = TRAINING.brightness_jitter,
) -> dict:
    """Train Cellpose from scratch on DATA's images + masks; the model goes to OUT.

    slices: for 3D volumes, "all" trains on xy slices and on xz / yz slices resampled to
    isotropic voxels (see volume_slices), "xy" on xy slices only.
    background: unlabelled real images; up to N_BACKGROUND_CROPS nucleus-free squares of them
    join the training set as images with empty masks (see background.py).
    brightness_jitter: each training crop's intensities times a factor drawn log-uniformly
    from [1 / brightness_jitter, brightness_jitter] (1: off; cellpose_compat.random_brightness).
    on_epoch(epoch, loss) is called whenever cellpose reports (epoch 0, 5, then every 10).
    """
    _check_options(epochs, learning_rate, bsize, batch, images_per_epoch, slices)
    check_brightness_jitter(brightness_jitter)
    if (out / CONFIG_FILE).exists() and not overwrite:
        raise InputError(f"{out} already holds a segmentation model; pass --overwrite")
    gpu = use_gpu(device)
    found = training_slices(data, slices)
    # the diameter prediction rescales by is measured in xy: the xz / yz slices only teach
    # the network how cells look across z
    diameter = diameter or median_diameter(found.xy_masks())
    # at least one full batch per epoch: a single training image would otherwise give
    # batch-1 steps (images are drawn with replacement when this differs from their number)
    images_per_epoch = images_per_epoch or max(len(found.images), batch)
    models, train = cellpose_modules(out)
    images, masks, normalize, crops = _with_background(
        found, background, diameter, n_background_crops, seed
    )
    # pseudo-label crops' unconfident cells: pixels that train nothing (background squares none)
    ignored = found.ignored + [None] * len(crops) if found.has_ignored_pixels() else None
    out.mkdir(parents=True, exist_ok=True)  # after the checks: a refused run leaves nothing
    import torch

    torch.manual_seed(seed)
    # weights; cellpose reseeds numpy with the epoch number for its crops and augmentation
    np.random.seed(seed)
    start = time.perf_counter()
    net = models.CellposeModel(
        gpu=gpu, pretrained_model=False, model_type=None, diam_mean=DIAM_MEAN, nchan=2
    )
    losses, epoch_losses = _train_cellpose(
        train, net, out, images, masks, normalize, epochs, learning_rate, images_per_epoch,
        batch, bsize, diameter, on_epoch, min_train_masks=0 if crops else 1, ignored=ignored,
        brightness=brightness_jitter,
    )  # fmt: skip
    config = {
        "format": "cellsynth-cellpose",
        "dims": found.dims,
        "slices": slices if found.dims == 3 else "xy",
        "diameter": diameter,
        "diam_mean": DIAM_MEAN,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "bsize": bsize,
        "batch": batch,
        "images_per_epoch": images_per_epoch,
        "brightness_jitter": brightness_jitter,
        brightness.CONFIG_KEY: _foreground_top(images, masks, normalize),
        "optimizer": "SGD momentum 0.9",
        "seed": seed,
        "data": str(data),
        "n_training_images": len(found.images),
        "n_slices": found.counts(),
        "n_with_ignored_pixels": sum(i is not None for i in found.ignored),
        **_background_record(background, crops),
        "final_loss": float(losses[-1]),
        "loss_log": epoch_losses,
        "seconds": round(time.perf_counter() - start, 1),
        "provenance": io.provenance("segment-train"),
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return config


def _train_cellpose(
    train: Any,
    net: Any,
    out: Path,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    normalize: bool | dict,
    epochs: int,
    learning_rate: float,
    images_per_epoch: int,
    batch: int,
    bsize: int,
    diameter: float,
    on_epoch: Callable[[int, float], None] | None,
    min_train_masks: int,
    ignored: list[np.ndarray | None] | None = None,
    brightness: float = 1.0,
) -> tuple[list[float], list[tuple[int, float]]]:
    """cellpose's train_seg in a scratch folder OUT/.training, the weights moved to
    OUT/MODEL_FILE; returns its losses and the per-epoch log it reported. IGNORED: per image,
    pixels that get no loss (None: every pixel trains, cellpose's own labels). BRIGHTNESS: the
    largest factor of random_brightness (1: none)."""
    work = out / ".training"
    shutil.rmtree(work, ignore_errors=True)
    (work / "models").mkdir(parents=True)
    with (
        EpochLog(on_epoch) as epoch_log,
        empty_masks_allowed(diameter),
        ignore_aware_loss(),
        random_brightness(brightness),
    ):
        if ignored is not None:
            masks = flows_with_ignored(masks, ignored, net.device)
        path, losses, _ = train.train_seg(
            net.net,
            train_data=images,
            train_labels=masks,
            channels=[0, 0],
            normalize=normalize,
            n_epochs=epochs,
            SGD=True,  # cellpose's own CLI default (momentum 0.9); AdamW wants ~50x lower rates
            learning_rate=learning_rate,
            weight_decay=1e-5,
            nimg_per_epoch=images_per_epoch,
            batch_size=batch,
            bsize=bsize,
            save_path=str(work),
            model_name=MODEL_FILE,
            min_train_masks=min_train_masks,
        )
    os.replace(path, out / MODEL_FILE)
    shutil.rmtree(work, ignore_errors=True)
    return losses, epoch_log.losses


def _check_options(
    epochs: int,
    learning_rate: float,
    bsize: int,
    batch: int,
    images_per_epoch: int | None,
    slices: str,
) -> None:
    if epochs < 1 or bsize < 16 or batch < 1 or learning_rate <= 0:
        raise InputError("--epochs and --batch must be >= 1, --bsize >= 16, --lr > 0")
    if images_per_epoch is not None and images_per_epoch < 1:
        raise InputError(f"--images-per-epoch must be >= 1, got {images_per_epoch}")
    check_choice(slices, SLICES, "--slices")


def _with_background(
    found: TrainingSlices, background: Path | None, diameter: float, n_crops: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray], bool | dict, list]:
    """The training images and masks, with up to N_CROPS nucleus-free squares of BACKGROUND
    as images without cells; how cellpose should normalise them; the crops.

    Crops (background squares, pseudo-label crops) come normalised by their whole source
    image, as Cellpose normalises that image when it predicts; then every other image is
    normalised here the way Cellpose would (per image, 1-99 %) and Cellpose normalises none."""
    if background is None and not any(found.normalised):
        # cellpose's own normalisation (per image, 1-99 %)
        return found.images, found.masks, True, []
    from cellsynth_cli.segment.background import background_crops, normalize_like_cellpose

    crops = [] if background is None else background_crops(background, diameter, n_crops, seed)
    own = [
        im if pre else normalize_like_cellpose(im)
        for im, pre in zip(found.images, found.normalised, strict=True)
    ]
    images = own + [c.image for c in crops]
    masks = found.masks + [np.zeros(c.image.shape, np.int32) for c in crops]
    return images, masks, {"normalize": False}, crops  # a dict: a bool changes its defaults


def _foreground_top(images: list[np.ndarray], masks: list, normalize: bool | dict) -> float | None:
    """The training nuclei's brightness as Cellpose sees them (brightness.foreground_top)."""
    if normalize is True:  # cellpose normalises these itself, per image
        from cellsynth_cli.segment.background import normalize_like_cellpose

        images = [normalize_like_cellpose(im) for im in images]
    return brightness.foreground_top(images, masks)


def _background_record(background: Path | None, crops: list) -> dict:
    return {
        "background": None if background is None else str(background),
        "background_crops": [
            {"source": c.source, "plane": c.plane, "corner": list(c.corner), "side": len(c.image)}
            for c in crops
        ],
    }
