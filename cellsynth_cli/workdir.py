"""The conventional project directory, so short commands chain without paths
(docs/method.md, The working directory).

    real/          the user's real images (zarr or NAME.tif + NAME_masks.tif)
    sim/           `simulate` output (sketches + masks)
    sketches/      `simulate from-labels` output (sketches of the real images)
    runs/NAME-TIME `train` output, with runs/latest pointing at the newest run
    synth/         `synthesize` output
    seg/           `segment train` output (a Cellpose model)
    pred/          `segment predict` output
    pseudo/        `segment pseudo-label` output (real images, masks, the confident cells)

Every path can still be given explicitly; the CLI prints each default it uses.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path

REAL = "real"
SIM = "sim"
SKETCHES = "sketches"
RUNS = "runs"
LATEST = "latest"
SYNTH = "synth"
SEG = "seg"
PRED = "pred"
PSEUDO = "pseudo"


def latest_run(root: Path = Path(".")) -> Path:
    """runs/latest (a link to the newest training run)."""
    return Path(root) / RUNS / LATEST


def new_run_dir(data: Path, root: Path = Path("."), now: datetime | None = None) -> Path:
    """Create runs/<data-name>-<YYYYmmdd-HHMMSS>/ for a new training run and return it.

    The directory is claimed by creating it, so two runs started in the same second (even in
    two processes) get different directories.
    """
    name = Path(data).resolve().name
    name = Path(name).stem if Path(data).suffix.lower() in (".zarr", ".tif", ".tiff") else name
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    runs = Path(root) / RUNS
    runs.mkdir(parents=True, exist_ok=True)
    for suffix in range(1, 1000):
        run = (
            runs / f"{name or 'data'}-{stamp}" if suffix == 1 else runs / f"{name}-{stamp}-{suffix}"
        )
        try:
            run.mkdir()
            return run
        except FileExistsError:
            continue
    raise FileExistsError(f"{runs}: no free run name for {name}-{stamp}")


def point_latest(run: Path) -> Path:
    """Make runs/latest (next to RUN) a relative link to RUN, replacing any older link at once.

    A real directory called `latest` is never replaced.
    """
    run = Path(run)
    link = run.parent / LATEST
    if link.exists() and not link.is_symlink():
        raise FileExistsError(f"{link} exists and is not a link; not replacing it")
    tmp = run.parent / f".{LATEST}.tmp-{secrets.token_hex(4)}"
    os.symlink(run.name, tmp, target_is_directory=True)
    try:
        os.replace(tmp, link)  # atomic: readers see the old or the new run, never neither
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return link


def link_latest(run: Path) -> Path | None:
    """runs/latest -> RUN when RUN lives in a directory called `runs` (as given, so a `runs`
    that is itself a link counts); None elsewhere. OSError when the link cannot be made."""
    run = Path(os.path.abspath(run))
    if run.parent.name != RUNS:
        return None
    return point_latest(run)
