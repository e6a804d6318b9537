"""Simulation configuration: one frozen dataclass, presets as TOML files, `key=value` overrides.

A preset file names only the fields that differ from the defaults below; unknown keys raise.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cellsynth_cli.errors import InputError

# `simulate fit`: central ranges (the usual nucleus) or wide ones (rare nuclei too), fit.SPREADS
FIT_SPREAD = "central"

PRESET_DIR = Path(__file__).parent.parent / "presets"

Range = tuple[float, float]


@dataclass(frozen=True)
class SimulationConfig:
    """Everything a simulator needs. Ranges (lo, hi) are sampled uniformly per volume or cell.

    Lengths are in voxels of the output grid; shape and scales are ordered (z, y, x) or (y, x).
    """

    preset: str = "custom"
    simulator: str = "nuclei"  # key in cellsynth_cli.simulate.simulators.SIMULATORS
    shape: tuple[int, ...] = (35, 512, 708)
    voxel_size: tuple[float, ...] = (1.0, 1.0, 1.0)  # µm per voxel, written to OME-Zarr

    # --- nuclei (ellipsoids) ---------------------------------------------------------
    n_cells: tuple[int, int] = (100, 300)  # cells per volume, drawn uniformly
    radius: Range = (5.0, 10.0)  # base radius r in voxels
    scale_x: Range = (1.0, 1.0)  # per-axis factors: ((x-xc)/(sx r))^2 + ... <= 1
    scale_y: Range = (1.0, 1.0)
    scale_z: Range = (1.0, 1.0)
    intensity: Range = (0.4, 1.0)  # sketch brightness of a cell, background is 0
    anisotropy: float = 1.0  # z voxel scale after rotation: the paper's sz for celegans (0.09)
    rotate: bool = True  # random rotation of every ellipsoid
    # 3D: rotate about z only, so a nucleus flattened in z stays flat (adherent cells lying
    # on the coverslip) instead of standing on its edge
    rotate_in_plane_only: bool = False
    overlap: bool = True  # False: reject cells that touch an existing one
    placement_tries: int = 20  # attempts per cell when overlap is False
    touching_fraction: float = 0.0  # overlap False: share of cells placed against another one
    elongated_fraction: float = 0.0  # fraction of cells stretched along one axis (mitosis)
    elongation: Range = (1.6, 2.2)  # stretch factor of elongated cells
    deform_strength: float = 0.0  # B-spline displacement std, fraction of the radius
    deform_grid: int = 4  # control points per axis of the B-spline deformation
    nucleoli: tuple[int, int] = (0, 0)  # dark nucleoli per nucleus
    nucleolus_radius: Range = (0.12, 0.22)  # fraction of the nucleus radius
    nucleolus_intensity: float = 0.35  # brightness relative to its nucleus

    # --- where cells may be (foreground region) ---------------------------------------
    region: str = "full"  # full | ellipsoid | discs
    region_size: Range = (0.8, 0.9)  # ellipsoid: semi-axes as a fraction of half the shape
    radius_reference_count: int = 0  # >0: r scales with (reference / count)^(1/3)
    n_discs: tuple[int, int] = (3, 8)  # discs: union of this many random discs
    disc_radius: Range = (0.15, 0.35)  # discs: radius as a fraction of the smaller side

    # --- T. castaneum: nuclei on a sphere, cartographic projection -------------------
    sphere_radius: float = 0.0  # voxels; 0: from the width, 2*pi*R = x size (390 at 2450)
    shell_spacing: float = 1.0  # voxels between the projected radii (z slices), centred on R
    nuclei_density: float = 0.0045  # mean nuclei per voxel^2 of sphere surface
    density_variation: float = 0.3  # +- relative density change from one side to the other
    radial_jitter: float = 1.0  # nucleus centres lie at R +- this many voxels
    min_distance: float = 0.9  # minimal centre distance as a fraction of r1 + r2

    # --- A. thaliana: membrane tessellation of a dome --------------------------------
    n_seeds: int = 2500  # cells at the paper shape (221, 495, 511); scales with the dome volume
    dome_height: Range = (0.8, 0.9)  # dome semi-axis along z, fraction of the z size
    dome_width: Range = (0.8, 0.9)  # dome semi-axes along y and x, fraction of half their sizes
    surface_density: float = 3.0  # seed density at the surface relative to the centre
    seed_spacing: float = 0.5  # minimal seed distance, fraction of the local mean spacing
    membrane_thickness: float = 1.5  # voxels
    centre_signal: float = 0.2  # membrane signal at the organism centre (1.0 at the surface)
    min_cell_fraction: float = 0.1  # cells below this fraction of the median volume are dropped

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> SimulationConfig:
        return replace(cls(), data, source)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def field_names() -> list[str]:
    return [f.name for f in fields(SimulationConfig)]


def _coerce(name: str, raw: Any, source: str) -> Any:
    """Convert a TOML value or a command-line string to the type of field `name`."""
    hints = typing.get_type_hints(SimulationConfig)
    hint = hints[name]
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            args = typing.get_args(hint)
            elem = args[0]
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            if len(args) == 2 and args[1] is not Ellipsis and len(items) != 2:
                raise ValueError(f"expected two values lo,hi, got {len(items)}")
            if len(args) == 2 and args[1] is Ellipsis and not items:
                raise ValueError("expected at least one value")
            values = tuple(elem(float(v)) if elem is int else elem(v) for v in items)
            if elem is int and any(float(v) != int(float(v)) for v in items):
                raise ValueError("expected whole numbers")
            return values
        if hint is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("true", "1", "yes", "on"):
                return True
            if str(raw).lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int:
            if float(raw) != int(float(raw)):
                raise ValueError("expected a whole number")
            return int(float(raw))
        return hint(raw)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{source}: bad value {raw!r} for '{name}' ({hint}): {exc}") from None


def replace(config: SimulationConfig, changes: dict[str, Any], source: str) -> SimulationConfig:
    """Return `config` with `changes` applied; unknown keys raise and list the valid ones."""
    valid = field_names()
    unknown = sorted(set(changes) - set(valid))
    if unknown:
        raise InputError(
            f"{source}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(valid)}"
        )
    coerced = {k: _coerce(k, v, source) for k, v in changes.items()}
    new = dataclasses.replace(config, **coerced)
    validate(new, source)
    return new


def validate(config: SimulationConfig, source: str = "config") -> None:
    if len(config.shape) not in (2, 3) or min(config.shape) < 1:
        raise InputError(f"{source}: shape must be 2 or 3 positive sizes, got {config.shape}")
    if len(config.voxel_size) != len(config.shape):
        raise InputError(
            f"{source}: voxel_size {config.voxel_size} must have one value per axis of "
            f"shape {config.shape}"
        )
    for name in (
        "n_cells",
        "radius",
        "scale_x",
        "scale_y",
        "scale_z",
        "intensity",
        "elongation",
        "nucleoli",
        "nucleolus_radius",
        "region_size",
        "n_discs",
        "disc_radius",
    ):
        lo, hi = getattr(config, name)
        if lo > hi or lo < 0:
            raise InputError(f"{source}: '{name}' must be 0 <= lo <= hi, got {(lo, hi)}")
    if not 0.0 <= config.elongated_fraction <= 1.0:
        raise InputError(f"{source}: elongated_fraction must be in [0, 1]")
    if not 0.0 <= config.touching_fraction <= 1.0:
        raise InputError(f"{source}: touching_fraction must be in [0, 1]")
    if config.region not in ("full", "ellipsoid", "discs"):
        raise InputError(
            f"{source}: region must be full, ellipsoid or discs, got {config.region!r}"
        )


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name: str) -> SimulationConfig:
    """A preset on top of the dataclass defaults: a bundled name (presets/NAME.toml) or the
    path of a TOML file (e.g. written by `simulate fit`)."""
    path = Path(name)
    # a path: a .toml name or anything with a directory part (a bare word is a bundled name,
    # even if a file of that name happens to be in the working directory)
    if path.suffix.lower() == ".toml" or len(path.parts) > 1:
        if not path.is_file():
            raise InputError(f"preset file {path} does not exist")
        name = path.stem
    else:
        path = PRESET_DIR / f"{name}.toml"
        if not path.is_file():
            raise InputError(
                f"unknown preset {name!r}; valid presets: {', '.join(preset_names())} "
                "(or the path of a .toml preset file)"
            )
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    return replace(SimulationConfig(), {"preset": name, **data}, source=str(path.name))


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Parse `--set key=value` items into a dict (values are coerced by `replace`)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise InputError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def parse_shape(text: str) -> tuple[int, ...]:
    """Parse 'Z,Y,X' or 'Y,X' into positive ints."""
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise InputError(f"--shape expects integers like 35,512,708, got {text!r}") from None
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise InputError(f"--shape expects 2 or 3 positive integers, got {text!r}")
    return shape


def toml_value(value: Any) -> str:
    """A TOML literal of a plain value (bool, str, number or a list of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)
