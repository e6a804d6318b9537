"""Fault injection for tests: zarr chunk writes that fail as on a full disk (ENOSPC).

A slow disk: when the `fail_at`-th chunk write fails, the writes before it are still in their
writer threads (they used to bring the deleted temporary back) and the ones after it still
wait in zarr's event loop (they used to be destroyed pending at exit, with asyncio noise).
In-process: `monkeypatch.setattr(LocalStore, "set", failing_set(...))`. In a child process
(the real `cellsynth`): put the directory of `sitecustomize_source(...)` on PYTHONPATH.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import time
from pathlib import Path

from zarr.storage import LocalStore

TESTS_DIR = Path(__file__).resolve().parent


def failing_set(fail_at: int, delay: float):
    """A LocalStore.set whose `fail_at`-th chunk write raises ENOSPC; metadata is written."""
    real_set = LocalStore.set
    chunk_writes = itertools.count(1)

    def slow_write(store: LocalStore, key: str, value) -> None:
        time.sleep(delay)
        store.set_sync(key, value)

    async def set_(self: LocalStore, key: str, value) -> None:
        if "/c/" not in key:  # zarr.json, not a chunk (v3 chunk keys are ARRAY/c/I/J)
            return await real_set(self, key, value)
        n = next(chunk_writes)
        if n == fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        if n > fail_at:
            await asyncio.sleep(3 * delay)  # queued: still waiting when the in-flight ones end
        await asyncio.to_thread(slow_write, self, key, value)

    return set_


def sitecustomize_source(fail_at: int, delay: float) -> str:
    """A sitecustomize.py that installs failing_set in every Python started with it."""
    return (
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS_DIR)!r})\n"
        "from zarr.storage import LocalStore\n"
        "from full_disk import failing_set\n"
        f"LocalStore.set = failing_set({fail_at}, {delay})\n"
    )
