"""Shared fixtures; tests never touch the network."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
DSB_DIR = REPO / "data" / "dsb2018"


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _is_loopback(address) -> bool:
    """This machine only: loopback TCP (a local Dask cluster) and unix sockets."""
    return isinstance(address, str | bytes) or (
        isinstance(address, tuple) and str(address[0]) in LOOPBACK
    )


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach another machine fails the test (loopback stays usable)."""
    connect, create_connection = socket.socket.connect, socket.create_connection

    def guarded_connect(sock, address, *args, **kwargs):
        if not _is_loopback(address):
            raise AssertionError(f"a test tried to use the network ({address})")
        return connect(sock, address, *args, **kwargs)

    def guarded_create_connection(address, *args, **kwargs):
        if not _is_loopback(address):
            raise AssertionError(f"a test tried to use the network ({address})")
        return create_connection(address, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "create_connection", guarded_create_connection)


def pytest_collection_modifyitems(items):
    """The files with the most `slow` tests run first. make test hands whole files to two
    workers (--dist loadfile --no-loadscope-reorder): a long file started last keeps one worker
    busy for minutes after the other has finished."""
    slow_in_file: dict[Path, int] = {}
    for item in items:
        slow = item.get_closest_marker("slow") is not None
        slow_in_file[item.path] = slow_in_file.get(item.path, 0) + slow
    items.sort(key=lambda item: -slow_in_file[item.path])  # stable: a file's order is kept


@pytest.fixture
def dsb_dir() -> Path:
    return DSB_DIR


def run(*args):
    """`cellsynth ARGS` in this process (Typer's CliRunner): fast, and monkeypatches apply.
    run_cellsynth below runs the real executable."""
    from typer.testing import CliRunner

    from cellsynth_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def cellsynth_command() -> list[str]:
    """The installed `cellsynth` entry point (the real executable users type)."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "cellsynth"
    found = str(beside) if beside.exists() else shutil.which("cellsynth")
    if found is None:
        raise AssertionError("the cellsynth executable is not installed (pip install -e .)")
    return [found]


def run_cellsynth(*args, cwd: Path | None = None, timeout: float = 300, env: dict | None = None):
    """Run the real `cellsynth` in a child process, without stdin, as CI does."""
    import os
    import subprocess

    env = {**os.environ, "CI": "true", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [*cellsynth_command(), *(str(a) for a in args)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fake_segmenter(model_dir: Path, model, monkeypatch, diameter: float, dims: int) -> Path:
    """A `segment train` folder that passes segmenter_config, with Cellpose replaced by MODEL
    (an object with Cellpose's `eval`) in this process."""
    import json

    from cellsynth_cli.segment import model as segmenter

    model_dir.mkdir()
    (model_dir / segmenter.CONFIG_FILE).write_text(json.dumps({"diameter": diameter, "dims": dims}))
    (model_dir / segmenter.MODEL_FILE).write_bytes(b"")
    monkeypatch.setattr(
        segmenter, "load_segmenter", lambda d, device="auto": (model, segmenter.segmenter_config(d))
    )
    return model_dir


def discs(shape, centres, radius=6, seed=0):
    """A noisy image of bright discs and its instance masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    masks = np.zeros(shape, np.int32)
    for label, (y, x) in enumerate(centres, start=1):
        masks[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = label
    image = 20 + 150 * (masks > 0) + rng.normal(0, 5, shape)
    return image.astype(np.float32), masks
