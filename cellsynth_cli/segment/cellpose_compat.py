"""Everything cellsynth does to Cellpose's internals, in one place: written for cellpose 3.1.1.

cellpose is imported lazily (it takes seconds) with its model directory inside our folder,
its numba kernels cached on disk, its tqdm bars disabled, its per-epoch log lines turned into
callbacks, and its diameter measure told that an empty background crop has cells of the
training diameter. A Cellpose upgrade starts here: each patch names the cellpose function it
relies on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


def cellpose_modules(model_dir: Path) -> Any:
    """cellpose's `models` and `train` modules, imported with the patches below in place."""
    # cellpose reads its model directory when imported: keep it inside our folder
    os.environ.setdefault("CELLPOSE_LOCAL_MODELS_PATH", str(model_dir / ".cellpose"))
    warnings.filterwarnings("ignore", message="Sparse invariant checks")  # torch, from cellpose
    with _numba_cache_on():
        from cellpose import models, train

    _silence_progress_bars()

    logging.getLogger("cellpose").setLevel(logging.WARNING)
    return models, train


@contextlib.contextmanager
def _numba_cache_on() -> Iterator[None]:
    """cellpose.dynamics compiles its mask kernels (steps2D, steps3D, _extend_centers) with
    numba when imported and caches none of them: about 6 s of every process that segments, on
    a 2-core CPU. Imported while numba.njit defaults to cache=True, they compile once per
    installation (numba keeps the cache beside the source, or in the user's cache folder when
    that is read-only, and recompiles when the source changes). cellpose caches its own
    map_coordinates kernel this way, so it already needs a folder numba can write."""
    import numba

    njit = numba.njit

    @functools.wraps(njit)
    def njit_cached(*args: Any, **kwargs: Any) -> Any:
        return njit(*args, **{"cache": True, **kwargs})

    numba.njit = njit_cached
    try:
        yield
    finally:
        numba.njit = njit


def _silence_progress_bars() -> None:
    """cellpose's own tqdm bars would interleave with ours. TQDM_DISABLE cannot do it: tqdm
    reads it when first imported, and torch imports it first. So the names cellpose looks
    tqdm/trange up under get versions that are disabled (a caller's disable= still wins)."""
    import importlib

    import tqdm

    for name in ("core", "dynamics", "models", "train", "utils", "io"):
        module = importlib.import_module(f"cellpose.{name}")
        for attr in ("tqdm", "trange"):
            if hasattr(module, attr):
                setattr(module, attr, functools.partial(getattr(tqdm, attr), disable=True))


class EpochLog(logging.Handler):
    """Turns cellpose's per-epoch log lines ("10, train_loss=0.53, ...") into callbacks."""

    pattern = re.compile(r"^(\d+), train_loss=([0-9.eE+-]+)")

    def __init__(self, on_epoch: Callable[[int, float], None] | None) -> None:
        super().__init__(logging.INFO)
        self.on_epoch = on_epoch
        self.losses: list[tuple[int, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:  # e.g. images dropped for too few masks
            logging.lastResort.handle(record)
            return
        found = self.pattern.match(record.getMessage())
        if found:
            epoch, loss = int(found[1]), float(found[2])
            self.losses.append((epoch, loss))
            if self.on_epoch:
                try:
                    self.on_epoch(epoch, loss)
                except Exception:  # a display problem must not abort training
                    self.handleError(record)

    def __enter__(self) -> EpochLog:
        logger = logging.getLogger("cellpose.train")
        self._saved = logger.level, logger.propagate
        logger.setLevel(logging.INFO)
        logger.propagate = False  # keep cellpose's own chatter off the console
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger("cellpose.train")
        logger.removeHandler(self)
        logger.setLevel(self._saved[0])
        logger.propagate = self._saved[1]


@contextlib.contextmanager
def empty_masks_allowed(diameter: float) -> Iterator[None]:
    """While training: an image with no cells counts as having cells of DIAMETER, and
    cellpose's "empty masks!" warning (expected for background crops) is not shown.

    cellpose rescales each training image by its cells' diameter, clipped below at 5 px: an
    empty background crop would be zoomed 6x (diam_mean 30 / 5) and no longer look like the
    real background at the scale the network sees it.
    """
    from cellpose import utils

    measure = utils.diameters
    flows_log = logging.getLogger("cellpose.dynamics")
    expected = _DropMessage("empty masks!")
    flows_log.addFilter(expected)

    def diameters(masks: np.ndarray) -> tuple[float, np.ndarray]:
        if not np.any(masks):
            return diameter, np.zeros(0)
        return measure(masks)

    utils.diameters = diameters
    try:
        yield
    finally:
        utils.diameters = measure
        flows_log.removeFilter(expected)


class _DropMessage(logging.Filter):
    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.message


def flows_with_ignored(
    masks: list[np.ndarray], ignored: list[np.ndarray | None], device: Any
) -> list[np.ndarray]:
    """Cellpose's training labels with a channel of pixels that train nothing:
    [masks, cell probability, ignored, flow y, flow x] per image.

    cellpose.dynamics.labels_to_flows computes [masks, cell probability, flow y, flow x]; the
    ignored channel goes before the flows because cellpose's train_seg takes labels of more
    than one channel as precomputed, its _get_batch drops channel 0 (the masks) and
    transforms.random_rotate_and_resize turns the last two channels as flows and interpolates
    the others. ignore_aware_loss reads the channel.
    """
    from cellpose import dynamics

    flows = dynamics.labels_to_flows([m.copy() for m in masks], device=device)
    labels = []
    for flow, pixels in zip(flows, ignored, strict=True):
        channel = np.zeros(flow.shape[1:], np.float32) if pixels is None else pixels
        labels.append(np.concatenate([flow[:2], channel[None].astype(np.float32), flow[2:]]))
    return labels


@contextlib.contextmanager
def ignore_aware_loss() -> Iterator[None]:
    """While training: cellpose's train._loss_fn_seg gives no loss to ignored pixels of labels
    made by flows_with_ignored (4 channels after _get_batch: probability, ignored, flows).

    The same terms as cellpose's (flows: MSE against 5x the flows, halved; probability:
    binary cross-entropy) with each pixel weighted by 1 - ignored, over the same number of
    pixels, so a batch without ignored pixels scores exactly as in cellpose.
    """
    from cellpose import train

    original = train._loss_fn_seg

    def loss(lbl: np.ndarray, y: Any, device: Any) -> Any:
        if lbl.shape[1] != 4:
            return original(lbl, y, device)
        import torch

        labels = torch.from_numpy(lbl).to(device)
        keep = (1 - labels[:, 1]).clamp(0, 1)
        flows = (keep[:, None] * (y[:, :2] - 5.0 * labels[:, 2:]) ** 2).mean() / 2
        probability = torch.nn.functional.binary_cross_entropy_with_logits(
            y[:, -1], (labels[:, 0] > 0.5).float(), weight=keep
        )
        return flows + probability

    train._loss_fn_seg = loss
    try:
        yield
    finally:
        train._loss_fn_seg = original


@contextlib.contextmanager
def random_brightness(max_factor: float) -> Iterator[None]:
    """While training: every augmented training crop (cellpose's
    transforms.random_rotate_and_resize, which train_seg calls once per batch) has its
    intensities multiplied by a factor drawn log-uniformly from [1 / MAX_FACTOR, MAX_FACTOR].

    Cellpose normalises an image by its own 1-99 % percentiles, so a nucleus much brighter
    than the rest of its image comes out far above 1; synthetic images whose nuclei never do
    teach the network to count such a nucleus's glow as nucleus. Factors only above 1 also
    teach it that a nucleus of the usual brightness ends further in (measured: outlines 10 %
    too small), hence the range around 1. cellpose seeds numpy by the epoch, so the factors
    repeat from run to run. MAX_FACTOR 1 changes nothing."""
    if max_factor == 1.0:
        yield
        return
    from cellpose import transforms

    original = transforms.random_rotate_and_resize

    def jittered(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        images = out[0]
        spread = np.log(max_factor)
        factors = np.exp(np.random.uniform(-spread, spread, len(images)))
        images *= factors.reshape(-1, *[1] * (images.ndim - 1)).astype(images.dtype)
        return out

    transforms.random_rotate_and_resize = jittered
    try:
        yield
    finally:
        transforms.random_rotate_and_resize = original
