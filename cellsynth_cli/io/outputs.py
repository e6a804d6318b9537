"""A stage's outputs: which already exist (refuse, resume or overwrite), the temporaries a
killed writer left, the provenance record, and the checksum that names a model file."""

from __future__ import annotations

import hashlib
import shutil
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cellsynth_cli.errors import InputError
from cellsynth_cli.io.read import read_provenance
from cellsynth_cli.io.volume import volume_name, volume_path


def existing_outputs(directory: Path, names: Iterable[str]) -> list[Path]:
    """Which of DIR/NAME.zarr already exist (to refuse or resume before any work)."""
    paths = (volume_path(directory, name) for name in names)
    return [p for p in paths if p.exists()]


def outputs_to_keep(
    directory: Path, names: Iterable[str], overwrite: bool, resume: bool
) -> set[str]:
    """Names whose DIR/NAME.zarr exists and is kept (--resume). Refuses before any work when
    outputs exist and neither --resume nor --overwrite says what to do with them."""
    if overwrite and resume:
        raise InputError("--resume keeps existing outputs and --overwrite replaces them: give one")
    existing = existing_outputs(directory, names)
    if not existing or overwrite:
        return set()
    if not resume:
        raise InputError(
            f"{directory} already holds {len(existing)} of the outputs (e.g. {existing[0].name}); "
            "pass --resume to keep them and make the rest, or --overwrite to replace them"
        )
    return {volume_name(p) for p in existing}


def file_checksum(path: Path) -> str:
    """SHA-256 of a file (models are identified by it across processes and machines)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def remove_temporaries(directory: Path, names: Iterable[str]) -> None:
    """Delete the hidden temporaries of NAME.zarr that a killed writer left behind (and the
    backup of a replaced volume, once the new one is in place)."""
    for name in names:
        target = volume_path(directory, name)
        for tmp in Path(directory).glob(f".{target.name}.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        if target.exists():
            for old in Path(directory).glob(f".{target.name}.old-*"):
                shutil.rmtree(old, ignore_errors=True)


def written_by_run(directory: Path, name: str, run: str) -> Path | None:
    """DIR/NAME.zarr if run RUN (the `run` token in its provenance) already wrote it.

    A task re-run after its worker died may find its volume already in place: it returns it
    instead of writing it a second time.
    """
    path = volume_path(directory, name)
    if path.exists() and read_provenance(path).get("run") == run:
        return path
    return None


def provenance(stage: str, **fields: Any) -> dict:
    """The provenance record a stage stores with each volume it writes."""
    from cellsynth_cli import __version__

    return {
        "stage": stage,
        "version": __version__,
        "command": " ".join(sys.argv),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
    }
