"""Models that ship inside the package: `--model bundled:NAME` finds them wherever it is installed.

Each is a folder cellsynth_cli/models/NAME/ with a weights-only checkpoint.pt (the EMA
network, its configuration, intensity normalisation and a `provenance` record of how it was
trained), config.json and loss.png beside it. `make bundled-model` rebuilds them. They are
demo models, trained on the small bundled real image: not general-purpose.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from cellsynth_cli.errors import InputError

PREFIX = "bundled:"


def models_root() -> Path:
    return Path(str(resources.files("cellsynth_cli") / "models"))


def available() -> list[str]:
    """Names of the bundled models (folders that hold a checkpoint)."""
    root = models_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "checkpoint.pt").is_file())


def is_bundled(spec: str | Path) -> bool:
    return str(spec).startswith(PREFIX)


def resolve(spec: str | Path) -> Path:
    """bundled:NAME -> the folder of that model; unknown names list the ones there are."""
    name = str(spec)[len(PREFIX) :]
    if name not in available():
        names = ", ".join(f"{PREFIX}{n}" for n in available()) or "none are installed"
        raise InputError(f"no bundled model {str(spec)!r}; bundled models: {names}")
    return models_root() / name
