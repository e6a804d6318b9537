"""make's rule for the pipeline: a stage is done when its stamp matches.

A stamp is the hash of a stage's recipe sections and of its inputs (the stamps of the stages
it reads, and a fingerprint of the real images). PROJECT/.cellsynth/STAGE.json holds the
stamp of the finished stage, with its settings, seconds and result; STAGE.started holds the
stamp of an attempt in progress, so a rerun after a kill knows it may resume inside.

The stamp covers settings and inputs, not the code: a stage finished by another cellsynth
version stays up to date (its outputs are kept), but its record names that version, and the
pipeline says so per stage (`made_by_another_version`) so the user can redo it with --from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cellsynth_cli import __version__, io

STATE_DIR = ".cellsynth"


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_fingerprint(data: Path) -> str:
    """Names, sizes and modification times of every file of the real images (make's view:
    touching or replacing an image reruns the stages that read it)."""
    entries = []
    for volume in io.list_volumes(data):
        files = [volume] if volume.is_file() else sorted(volume.rglob("*"))
        for path in files:
            if path.is_file():
                stat = path.stat()
                entries.append((str(path.relative_to(data)), stat.st_size, stat.st_mtime_ns))
        masks = volume.with_name(volume.stem + io.MASKS_SUFFIX + volume.suffix)
        if volume.is_file() and masks.exists():  # masks are not read, but travel with it
            entries.append((masks.name, masks.stat().st_size, masks.stat().st_mtime_ns))
    return digest(entries)


def _state(project: Path) -> Path:
    return Path(project) / STATE_DIR


def finished(project: Path, stage: str) -> dict | None:
    try:
        return json.loads((_state(project) / f"{stage}.json").read_text())
    except (OSError, ValueError):
        return None


def started(project: Path, stage: str) -> str | None:
    try:
        return (_state(project) / f"{stage}.started").read_text().strip()
    except OSError:
        return None


def mark_started(project: Path, stage: str, stamp: str) -> None:
    _state(project).mkdir(parents=True, exist_ok=True)
    (_state(project) / f"{stage}.json").unlink(missing_ok=True)
    io.write_text(_state(project) / f"{stage}.started", stamp + "\n", overwrite=True)


def mark_finished(project: Path, stage: str, record: dict) -> dict:
    """Writes the stage's record, with the cellsynth version that made its outputs; returns
    it as written."""
    record = {**record, "version": __version__}
    io.write_text(_state(project) / f"{stage}.json", json.dumps(record, indent=2), overwrite=True)
    (_state(project) / f"{stage}.started").unlink(missing_ok=True)
    return record


def known(project: Path, stage: str) -> bool:
    """The pipeline has run this stage here before (finished or not): its outputs are ours."""
    return finished(project, stage) is not None or started(project, stage) is not None


UNRECORDED = "unrecorded"  # the version of a record written before versions were kept


def made_by_another_version(record: dict) -> str | None:
    """The cellsynth version a finished RECORD was made by when it is not this one, else
    None."""
    made_by = record.get("version", UNRECORDED)
    return None if made_by == __version__ else made_by


def kept_from_another_version(stage: str, made_by: str) -> str:
    """What a rerun says of a kept stage whose outputs another cellsynth version made."""
    maker = "an earlier cellsynth (version unrecorded)"
    if made_by != UNRECORDED:
        maker = f"cellsynth {made_by}"
    return (
        f"up to date, made by {maker}, this is {__version__}: "
        f"`--from {stage}` redoes it and every stage after it"
    )
