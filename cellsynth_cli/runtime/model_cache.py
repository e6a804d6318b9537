"""One loaded model per process, found again by its checksum: a Dask worker keeps it between
the volumes it is given, and loads another only when a task needs another (its memory is for
the volumes, so the old one is dropped first). DDPMs (synthesize) and Cellpose (predict, QC)
share it."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

_LOADED: dict[Hashable, Any] = {}


def cached(key: Hashable, load: Callable[[], Any]) -> Any:
    """The model stored under KEY (kind, checksum, device, ...), loaded by LOAD() on a miss."""
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = load()
    return _LOADED[key]


def keep(key: Hashable, model: Any) -> None:
    """Store a model loaded elsewhere (a stage that loaded it to check its options)."""
    _LOADED.clear()
    _LOADED[key] = model


def clear() -> None:
    """Forget what is loaded: the next call loads the model as it is now on disk."""
    _LOADED.clear()
