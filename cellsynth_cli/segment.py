"""The `segment` stage: Cellpose 3.1 trained from scratch, prediction, scoring and QC.

Nothing is downloaded: the network is built untrained (pretrained_model=False) and cellpose's
model directory points inside the segmentation model folder. 3D data trains on its xy slices
and on xz / yz slices resampled along z to isotropic voxels (Cellpose's recipe for 3D: its 3D
mode runs the 2D network on the YX, ZY and ZX planes of the isotropic volume). 3D prediction
uses that 3D mode with the anisotropy of the voxel size, or stitches 2D masks across z.
cellpose is imported lazily: it takes seconds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import secrets
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from cellsynth_cli import io
from cellsynth_cli.errors import InputError
from cellsynth_cli.matching import match_counts, segmentation_scores

MODEL_FILE = "cellpose_model"
CONFIG_FILE = "segmenter.json"
DIAM_MEAN = 30.0  # cellpose rescales every training image so cells have this diameter
SLICES = ("all", "xy")  # 3D training: xy + xz + yz slices, or xy slices only
MODES = ("3d", "stitch")  # 3D prediction: Cellpose's 3D mode, or 2D masks stitched across z
# QC judges: a trained Cellpose folder, or the classical segmenter (no model, no labels)
JUDGES = ("model", "classical")
STITCH_THRESHOLD = 0.5  # IoU that joins 2D masks of neighbouring z slices into one cell


def _check_choice(value: str, choices: tuple[str, ...], option: str) -> None:
    if value not in choices:
        raise InputError(f"{option} must be {' or '.join(choices)}, got {value!r}")


def _cellpose(model_dir: Path) -> Any:
    # cellpose reads its model directory when imported: keep it inside our folder
    os.environ.setdefault("CELLPOSE_LOCAL_MODELS_PATH", str(model_dir / ".cellpose"))
    warnings.filterwarnings("ignore", message="Sparse invariant checks")  # torch, from cellpose
    from cellpose import models, train

    _silence_progress_bars()

    logging.getLogger("cellpose").setLevel(logging.WARNING)
    return models, train


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


class _EpochLog(logging.Handler):
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

    def __enter__(self) -> _EpochLog:
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


def _use_gpu(device: str) -> bool:
    """--device auto | cpu | cuda as cellpose's gpu flag (cuda without a GPU is bad input)."""
    from cellsynth_cli.train import pick_device

    return pick_device(device).type == "cuda"


def median_diameter(masks: list[np.ndarray]) -> float:
    """Median equivalent-circle diameter of the instances of 2D masks."""
    sizes = np.concatenate([np.bincount(m.ravel())[1:] for m in masks])
    sizes = sizes[sizes > 0]
    if sizes.size == 0:
        raise InputError("training masks are empty (no labelled cell)")
    return float(2 * np.sqrt(np.median(sizes) / np.pi))


def z_anisotropy(voxel_size: tuple[float, ...] | None) -> float:
    """z step over x step of a 3D voxel size (Cellpose's `anisotropy`); 1 when unknown or 2D."""
    if voxel_size is None or len(voxel_size) != 3:
        return 1.0
    return float(voxel_size[0] / voxel_size[-1])


def volume_slices(
    image: np.ndarray, masks: np.ndarray, anisotropy: float = 1.0, orthogonal: bool = True
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """2D training slices of a 3D volume as (plane, image, masks), only those with cells.

    plane is "xy", "xz" or "yz". The xz and yz slices (shape (z, x) and (z, y)) are resampled
    along z by `anisotropy` so their pixels are square, as Cellpose's 3D mode sees them:
    images linearly, masks by nearest neighbour so labels stay labels. There are at most as
    many xz + yz slices as xy slices, evenly spaced: each is a resampled copy, and a big stack
    would otherwise multiply its memory.
    """
    slices = [("xy", im, m) for im, m in zip(image, masks, strict=True) if m.any()]
    if not orthogonal or image.shape[0] * anisotropy < 2:  # under 2 rows: no extent in z
        return slices
    has_cells = masks.any(axis=0)  # (y, x): which xz rows and yz columns cross a cell
    candidates = [("xz", int(y)) for y in np.flatnonzero(has_cells.any(axis=1))] + [
        ("yz", int(x)) for x in np.flatnonzero(has_cells.any(axis=0))
    ]
    if len(candidates) > len(slices):
        # evenly spaced over xz then yz, so both kinds and all positions are represented;
        # the spacing is >= 1, so no index repeats
        keep = np.linspace(0, len(candidates) - 1, len(slices)).round().astype(int)
        candidates = [candidates[i] for i in keep]
    for plane, i in candidates:
        if plane == "xz":
            im, m = image[:, i, :], masks[:, i, :]
        else:
            im, m = image[:, :, i], masks[:, :, i]
        if anisotropy != 1.0:
            # grid_mode: pixels as areas (as cellpose's own resize at prediction), so z plane
            # k covers rows [k * anisotropy, (k + 1) * anisotropy) and the pixels come out square
            factor = (anisotropy, 1)
            im = ndimage.zoom(
                im.astype(np.float32), factor, order=1, grid_mode=True, mode="nearest"
            )
            m = ndimage.zoom(m, factor, order=0, grid_mode=True, mode="nearest")
        if m.any():  # a z step finer than x shrinks z, which can drop a thin cell
            slices.append((plane, im, m))
    return slices


@dataclass
class TrainingSlices:
    """2D training images with their masks and the plane each was cut along."""

    images: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    planes: list[str] = field(default_factory=list)  # "xy" (also 2D images), "xz", "yz"
    dims: int = 0

    def counts(self) -> dict[str, int]:
        return {plane: self.planes.count(plane) for plane in ("xy", "xz", "yz")}

    def xy_masks(self) -> list[np.ndarray]:
        return [m for m, plane in zip(self.masks, self.planes, strict=True) if plane == "xy"]


def training_slices(data: Path, slices: str = "all") -> TrainingSlices:
    """2D (image, masks) pairs: 2D volumes as they are, 3D volumes cut by volume_slices.

    slices: "all" (xy, xz and yz slices of 3D volumes) or "xy" (xy slices only).
    """
    _check_choice(slices, SLICES, "--slices")
    found = TrainingSlices()
    for volume in io.read_volumes(data):
        if volume.image is None or volume.masks is None:
            raise InputError(f"{data}/{volume.name}: needs an image and masks to train on")
        found.dims = volume.image.ndim
        if found.dims == 2:
            pairs = [("xy", volume.image, volume.masks)]
        else:
            anisotropy = z_anisotropy(volume.voxel_size)
            pairs = volume_slices(volume.image, volume.masks, anisotropy, slices == "all")
        for plane, im, m in pairs:
            found.images.append(im.astype(np.float32))
            found.masks.append(m.astype(np.int32))
            found.planes.append(plane)
    if not found.images:
        raise InputError(f"{data}: no image with masks to train on")
    return found


def train_segmenter(
    data: Path,
    out: Path,
    epochs: int = 100,
    learning_rate: float = 0.2,
    bsize: int = 224,
    batch: int = 8,
    images_per_epoch: int | None = None,
    diameter: float | None = None,
    slices: str = "all",
    overwrite: bool = False,
    seed: int = 0,
    device: str = "auto",
    on_epoch: Callable[[int, float], None] | None = None,
    background: Path | None = None,
    n_background_crops: int = 4,
) -> dict:
    """Train Cellpose from scratch on DATA's images + masks; the model goes to OUT.

    slices: for 3D volumes, "all" trains on xy slices and on xz / yz slices resampled to
    isotropic voxels (see volume_slices), "xy" on xy slices only.
    background: unlabelled real images; up to N_BACKGROUND_CROPS nucleus-free squares of them
    join the training set as images with empty masks (see background.py).
    on_epoch(epoch, loss) is called whenever cellpose reports (epoch 0, 5, then every 10).
    """
    if epochs < 1 or bsize < 16 or batch < 1 or learning_rate <= 0:
        raise InputError("--epochs and --batch must be >= 1, --bsize >= 16, --lr > 0")
    if images_per_epoch is not None and images_per_epoch < 1:
        raise InputError(f"--images-per-epoch must be >= 1, got {images_per_epoch}")
    _check_choice(slices, SLICES, "--slices")
    if (out / CONFIG_FILE).exists() and not overwrite:
        raise InputError(f"{out} already holds a segmentation model; pass --overwrite")
    gpu = _use_gpu(device)
    found = training_slices(data, slices)
    images, masks = found.images, found.masks
    # the diameter prediction rescales by is measured in xy: the xz / yz slices only teach
    # the network how cells look across z
    diameter = diameter or median_diameter(found.xy_masks())
    # at least one full batch per epoch: a single training image would otherwise give
    # batch-1 steps (images are drawn with replacement when this differs from their number)
    images_per_epoch = images_per_epoch or max(len(images), batch)
    models, train = _cellpose(out)
    # cellpose's own normalisation (per image, 1-99 %) unless background crops need theirs
    normalize: bool | dict = True
    crops = []
    if background is not None:
        from cellsynth_cli.background import background_crops, normalize_like_cellpose

        crops = background_crops(background, diameter, n_background_crops, seed)
        images = [normalize_like_cellpose(im) for im in images] + [c.image for c in crops]
        masks = masks + [np.zeros(c.image.shape, np.int32) for c in crops]
        normalize = {"normalize": False}  # a dict: a bool would change cellpose's defaults
    out.mkdir(parents=True, exist_ok=True)  # after the checks: a refused run leaves nothing
    import torch

    torch.manual_seed(seed)
    # weights; cellpose reseeds numpy with the epoch number for its crops and augmentation
    np.random.seed(seed)
    start = time.perf_counter()
    net = models.CellposeModel(
        gpu=gpu,
        pretrained_model=False,
        model_type=None,
        diam_mean=DIAM_MEAN,
        nchan=2,
    )
    work = out / ".training"
    shutil.rmtree(work, ignore_errors=True)
    (work / "models").mkdir(parents=True)
    with _EpochLog(on_epoch) as epoch_log, _empty_masks_allowed(diameter):
        path, train_losses, _ = train.train_seg(
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
            min_train_masks=0 if crops else 1,
        )
    os.replace(path, out / MODEL_FILE)
    shutil.rmtree(work, ignore_errors=True)
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
        "optimizer": "SGD momentum 0.9",
        "seed": seed,
        "data": str(data),
        "n_training_images": len(found.images),
        "n_slices": found.counts(),
        "background": None if background is None else str(background),
        "background_crops": [
            {"source": c.source, "plane": c.plane, "corner": list(c.corner), "side": len(c.image)}
            for c in crops
        ],
        "final_loss": float(train_losses[-1]),
        "loss_log": epoch_log.losses,
        "seconds": round(time.perf_counter() - start, 1),
        "provenance": io.provenance("segment-train"),
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    return config


@contextlib.contextmanager
def _empty_masks_allowed(diameter: float) -> Iterator[None]:
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


def load_segmenter(model_dir: Path, device: str = "auto") -> tuple[Any, dict]:
    config = segmenter_config(model_dir)
    gpu = _use_gpu(device)
    models, _ = _cellpose(Path(model_dir))
    model = models.CellposeModel(gpu=gpu, pretrained_model=str(Path(model_dir) / MODEL_FILE))
    return model, config


def segment_image(
    model: Any, config: dict, image: np.ndarray, mode: str = "3d", anisotropy: float = 1.0
) -> np.ndarray:
    """Instance masks of a 2D or 3D image (3D: mode "3d" or "stitch", see MODES)."""
    _check_choice(mode, MODES, "--mode")
    kwargs: dict[str, Any] = dict(channels=[0, 0], diameter=config["diameter"])
    if image.ndim == 3:
        # without z_axis cellpose takes the shortest axis of a stack over 5 planes for z
        kwargs["z_axis"] = 0
        if mode == "3d":
            kwargs.update(do_3D=True, anisotropy=anisotropy)
        else:
            kwargs.update(do_3D=False, stitch_threshold=STITCH_THRESHOLD)
    masks, _, _ = model.eval(image.astype(np.float32), **kwargs)
    return np.asarray(masks).astype(np.uint32)


@dataclass(frozen=True)
class PredictJob:
    """One image to segment: everything a Dask worker needs."""

    model_dir: Path
    model_checksum: str
    image: Path
    name: str
    out_dir: Path
    mode: str
    device: str
    overwrite: bool
    run: str  # token of this run: a re-run task finds what an earlier attempt wrote


_SEGMENTERS: dict[tuple[str, str, str], tuple[Any, dict]] = {}  # per process: load Cellpose once


def cached_segmenter(model_dir: Path, checksum: str, device: str) -> tuple[Any, dict]:
    key = (str(Path(model_dir).resolve()), checksum, device)
    if key not in _SEGMENTERS:
        if io.file_checksum(Path(model_dir) / MODEL_FILE) != checksum:
            raise InputError(f"{model_dir} changed while segmenting (checksum differs)")
        _SEGMENTERS.clear()
        _SEGMENTERS[key] = load_segmenter(model_dir, device)
    return _SEGMENTERS[key]


def predict_one(job: PredictJob) -> dict:
    """Segment one image into OUT_DIR/<name>.zarr (in-process or on a Dask worker)."""
    done = io.written_by_run(job.out_dir, job.name, job.run)
    if done is not None:
        return {"name": job.name, "n_cells": int(io.read_provenance(done)["n_cells"])}
    volume = io.read_volume(job.image)
    if volume.image is None:
        raise InputError(f"{job.image}: no intensity image to segment")
    model, config = cached_segmenter(job.model_dir, job.model_checksum, job.device)
    anisotropy = z_anisotropy(volume.voxel_size)
    masks = segment_image(model, config, volume.image, job.mode, anisotropy)
    settings = {"mode": job.mode, "anisotropy": anisotropy} if volume.image.ndim == 3 else {}
    n_cells = int(len(np.unique(masks)) - 1)
    io.write_volume(
        job.out_dir,
        io.Volume(
            name=job.name,
            image=volume.image,
            masks=masks,
            voxel_size=volume.voxel_size,
            provenance=io.provenance(
                "segment-predict",
                model=str(job.model_dir),
                source=str(job.image),
                n_cells=n_cells,
                run=job.run,
                **settings,
            ),
        ),
        overwrite=job.overwrite,
    )
    return {"name": job.name, "n_cells": n_cells}


def predict(
    model_dir: Path,
    images: Path,
    out: Path,
    overwrite: bool = False,
    mode: str = "3d",
    on_volume: Callable[[str], None] | None = None,
    resume: bool = False,
    device: str = "auto",
    cluster: str | None = None,
) -> list[dict]:
    """Segment every image of IMAGES into OUT (the image with labels/cells).

    3D images: mode "3d" is Cellpose's 3D mode with anisotropy = z step / x step of the
    voxel size (1 when unknown); "stitch" joins 2D masks of the z slices. 2D: mode is unused.
    In this process, or one task per image on a Dask cluster (`cluster`, see cluster.py);
    Cellpose is loaded once per process, and only when something is left to segment.
    """
    from cellsynth_cli import cluster as dask_cluster

    _check_choice(mode, MODES, "--mode")
    dask_cluster.parse_cluster(cluster)
    paths = io.list_volumes(images)
    names = [io.volume_name(p) for p in paths]
    kept = io.outputs_to_keep(out, names, overwrite, resume)
    segmenter_config(model_dir)  # a bad model folder is reported before any work
    checksum = io.file_checksum(Path(model_dir) / MODEL_FILE)
    token = secrets.token_hex(8)
    jobs = [
        PredictJob(model_dir, checksum, path, name, out, mode, device, overwrite, token)
        for path, name in zip(paths, names, strict=True)
        if name not in kept
    ]
    results = [{"name": name, "skipped": True} for name in names if name in kept]
    _SEGMENTERS.clear()  # in this process: load the model as it is now, once for this call
    results += dask_cluster.run_per_volume(
        predict_one,
        jobs,
        [job.name for job in jobs],
        cluster,
        out,
        "predict",
        on_done=lambda result: on_volume(result["name"]) if on_volume else None,
    )
    return sorted(results, key=lambda r: r["name"])


def score(pred_dir: Path, ref_dir: Path) -> dict:
    pred = {io.volume_name(p): p for p in io.list_volumes(pred_dir)}
    ref = {io.volume_name(p): p for p in io.list_volumes(ref_dir)}
    names = sorted(set(pred) & set(ref))
    if not names:
        raise InputError(f"no volume names in common between {pred_dir} and {ref_dir}")
    rows = []
    for name in names:
        p, r = io.read_volume(pred[name]), io.read_volume(ref[name])
        if p.masks is None or r.masks is None:
            raise InputError(f"{name}: both --pred and --ref need instance masks")
        try:
            rows.append({"name": name, **segmentation_scores(p.masks, r.masks)})
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
    keys = ("dice", "ap@0.5", "ap@0.75", "precision", "recall", "f1")
    summary = {
        k: {
            "mean": float(np.mean([row[k] for row in rows])),
            "sd": float(np.std([row[k] for row in rows])),
        }
        for k in keys
    }
    return {
        "volumes": rows,
        "summary": summary,
        "unpaired_pred": sorted(set(pred) - set(ref)),
        "unpaired_ref": sorted(set(ref) - set(pred)),
    }


@dataclass(frozen=True)
class QCJob:
    """One synthetic volume to check against its own masks (in-process or on a worker)."""

    model_dir: Path | None  # None: the classical judge
    model_checksum: str
    path: Path
    mode: str
    device: str


def qc_one(job: QCJob) -> dict:
    """Phantom and vanished fractions of one synthetic volume (no file is written)."""
    from cellsynth_cli.noise import phantom_vanished

    volume = io.read_volume(job.path)
    if volume.image is None or volume.masks is None:
        raise InputError(f"{job.path}: QC needs a synthetic image with its simulated masks")
    if job.model_dir is None:
        counts = phantom_vanished(volume.image, volume.masks, volume.voxel_size)
    else:
        model, config = cached_segmenter(job.model_dir, job.model_checksum, job.device)
        anisotropy = z_anisotropy(volume.voxel_size)
        predicted = segment_image(model, config, volume.image, job.mode, anisotropy)
        counts = match_counts(predicted, volume.masks)
    return {"name": volume.name, "path": str(job.path), **counts}


def quality_control(
    model_dir: Path | None,
    data: Path,
    max_phantom: float = 1.0,
    max_vanished: float = 1.0,
    move_failed: Path | None = None,
    on_volume: Callable[[str], None] | None = None,
    device: str = "auto",
    mode: str = "3d",
    cluster: str | None = None,
    judge: str = "model",
) -> dict:
    """Segment each synthetic image; compare with its own simulated masks (IoU >= 0.5).

    judge "model": the Cellpose of model_dir segments; "classical": the classical segmenter
    (local threshold + watershed at the masks' own cell size; no model, no labels, so an
    annotation-free pipeline can clean its training set with it).

    3D volumes are segmented as `predict` does with the same mode, so QC judges the data
    the way the segmenter will be used. One task per volume on a Dask cluster with `cluster`
    (see cluster.py); failed volumes are moved here, after all are checked.

    phantom: predicted cells with no simulated partner (made from noise);
    vanished: simulated cells the segmenter cannot find (e.g. dim cells the DDPM erased).
    """
    from cellsynth_cli import cluster as dask_cluster

    _check_choice(mode, MODES, "--mode")
    _check_choice(judge, JUDGES, "--judge")
    dask_cluster.parse_cluster(cluster)
    if judge == "classical":
        model_dir, checksum = None, ""
    else:
        segmenter_config(model_dir)  # a bad model folder is reported before any work
        model_dir = Path(model_dir)
        checksum = io.file_checksum(model_dir / MODEL_FILE)
    paths = io.list_volumes(data)
    jobs = [QCJob(model_dir, checksum, path, mode, device) for path in paths]
    _SEGMENTERS.clear()  # in this process: load the model as it is now, once for this call
    rows = dask_cluster.run_per_volume(
        qc_one,
        jobs,
        [io.volume_name(path) for path in paths],
        cluster,
        Path(data),
        "qc",
        on_done=lambda row: on_volume(row["name"]) if on_volume else None,
        writes=False,
    )
    rows.sort(key=lambda r: r["name"])
    for row in rows:
        row["passed"] = row["phantom"] <= max_phantom and row["vanished"] <= max_vanished
    failed = [r for r in rows if not r["passed"]]
    if move_failed is not None and failed:
        move_failed.mkdir(parents=True, exist_ok=True)
        for r in failed:
            target = move_failed / Path(r["path"]).name
            if target.exists():
                raise InputError(f"{target} exists; not moving {r['path']} over it")
            shutil.move(r["path"], target)
            r["moved_to"] = str(target)
    return {
        "volumes": rows,
        "passed": [r["name"] for r in rows if r["passed"]],
        "failed": [r["name"] for r in failed],
        "max_phantom": max_phantom,
        "max_vanished": max_vanished,
        "judge": judge,
    }
