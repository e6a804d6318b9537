"""Shared fixtures; tests never touch the network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DSB_DIR = REPO / "data" / "dsb2018"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def dsb_dir() -> Path:
    return DSB_DIR


def cellsynth_command() -> list[str]:
    """The installed `cellsynth` entry point (the real executable users type)."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "cellsynth"
    found = str(beside) if beside.exists() else shutil.which("cellsynth")
    if found is None:
        raise AssertionError("the cellsynth executable is not installed (pip install -e .)")
    return [found]


def run_cellsynth(*args, cwd: Path | None = None, timeout: float = 300):
    """Run the real `cellsynth` in a child process, without stdin, as CI does."""
    import os
    import subprocess

    env = {**os.environ, "CI": "true", "COLUMNS": "200"}
    return subprocess.run(
        [*cellsynth_command(), *(str(a) for a in args)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
