"""Shared fixtures; tests never touch the network."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

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


MARGIN = "margin"  # user property of a checked quantity that hinges on the CPU's kernels


@pytest.fixture
def margin(record_property):
    """check(name, value, above=LIMIT or below=LIMIT): assert a quantity that depends on what
    a model learned, or on the CPU's kernels (bf16, blocked convolutions), and record it, so
    every run lists how far each such test is from its limit on this CPU's kernel set
    (pytest_terminal_summary) and `make test-isa` shows it on the others. A test using it is
    marked `kernels`."""
    import torch

    kernels = torch.backends.cpu.get_cpu_capability()

    def check(name: str, value: float, *, above: float | None = None, below: float | None = None):
        value = float(value)
        record_property(MARGIN, {"name": name, "value": value, "above": above, "below": below,
                                 "kernels": kernels})  # fmt: skip
        if above is not None:
            assert value > above, f"{name} {value:.4g} not above {above:g} ({kernels} kernels)"
        if below is not None:
            assert value < below, f"{name} {value:.4g} not below {below:g} ({kernels} kernels)"

    return check


def pytest_terminal_summary(terminalreporter):
    """Each `margin` check of the run: its value, its limit and the CPU kernels it ran on."""
    rows = []
    stats = terminalreporter.stats
    for report in stats.get("passed", []) + stats.get("failed", []):
        if report.when == "call":
            rows += [(report.nodeid, v) for k, v in report.user_properties if k == MARGIN]
    if not rows:
        return
    terminalreporter.section("margins of the checks that hinge on learning or CPU kernels")
    for nodeid, v in sorted(rows, key=lambda row: (row[0], row[1]["name"])):
        limit, side = (v["above"], ">") if v["above"] is not None else (v["below"], "<")
        terminalreporter.write_line(
            f"{v['kernels']:>8}  {v['name']} {v['value']:.4g} {side} {limit:g}  "
            f"(x{v['value'] / limit:.2g})  {nodeid.split('::')[-1]}"
        )


@pytest.hookimpl(tryfirst=True)  # before -m selects on the marks
def pytest_collection_modifyitems(items):
    """The files with the most `slow` tests run first. make test hands whole files to two
    workers (--dist loadfile --no-loadscope-reorder): a long file started last keeps one worker
    busy for minutes after the other has finished. A test that checks a margin is marked
    `kernels` (make test-isa runs those under each CPU kernel set)."""
    for item in items:
        if MARGIN in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.kernels)
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


def script_module(name: str):
    """scripts/NAME.py as a module (scripts/ is not a package), loaded once per process."""
    import importlib.util
    import sys

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


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


def dim_and_bright_nuclei(seed=3):
    """(image on a [0, 1] scale, masks, each label's level): a 4 x 4 grid of nuclei of radius
    11, one in four (labels 1, 6, 11, 16) five to ten times dimmer than the others, two (3 and
    8) far brighter, as the top of a robust range sets it; blur, background, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    masks = np.zeros((256, 256), np.int32)
    level = np.zeros(1)
    for i, (cy, cx) in enumerate([(y, x) for y in range(32, 256, 64) for x in range(32, 256, 64)]):
        masks[(yy - cy) ** 2 + (xx - cx) ** 2 <= 11**2] = i + 1
        dim = (i % 4) == (i // 4) % 4  # one in four, spread over the grid
        level = np.append(level, rng.uniform(0.03, 0.04) if dim else rng.uniform(0.15, 0.3))
    level[[3, 8]] = 0.5  # the brightest
    sketch = ndimage.gaussian_filter(level[masks], 1.5) + 0.05
    image = (sketch + rng.normal(0, 0.02, sketch.shape)).astype(np.float32)
    return image, masks, level
