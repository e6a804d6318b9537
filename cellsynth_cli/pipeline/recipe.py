"""The pipeline's recipe: every setting of every stage, in one TOML file of overrides.

A recipe is a section per stage (nanoGPT's config files are the model): the dataclasses
below hold the defaults, which are the 2D study's best row (docs/study_2d.md: a pseudo-
sketch conditioned DDPM sampled with guidance 2, a quarter of the nuclei touching, real
background squares for Cellpose); a budget by name scales the step counts;
PROJECT/pipeline.toml and `--set stage.key=value` override single keys. Torch-free, so the
CLI can read it at start-up.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cellsynth_cli.ddpm.config import TrainConfig
from cellsynth_cli.ddpm.noise_defaults import DEFAULT_KLD_THRESHOLD, DEFAULT_SIMULATED_SKETCHES
from cellsynth_cli.defaults import SEED
from cellsynth_cli.diffusion import defaults
from cellsynth_cli.errors import InputError
from cellsynth_cli.segment.config import (
    MATCH_BRIGHTNESS,
    MODE,
    PSEUDO_LABELS,
    TRAINING,
    PseudoLabelling,
    check_brightness_jitter,
)
from cellsynth_cli.simulate.config import FIT_SPREAD, toml_value

AUTO_FRACTION = -1.0  # [predict] min_size_fraction: the default for the data (TOML has no None)


@dataclass(frozen=True)
class FitSection:
    spread: str = FIT_SPREAD  # fitted ranges: central (20-80 %) or wide (2-98 %)
    radius: float = 0.0  # typical nucleus radius in pixels for the detector; 0: measured


@dataclass(frozen=True)
class TrainSection:
    # a DDPM to use as it is (a `cellsynth train` run or bundled:NAME) instead of training one;
    # the other keys then only serve [rounds] generator_steps (batch, lr, seed, checkpoints)
    model: str = ""
    steps: int = 6000  # the study's DDPM (41 min on 2 CPU cores at 256 x 256)
    batch: int = 8
    patch: int = 128  # in-plane patch side (z: up to 16 slices), shrunk to fit the images
    lr: float = 5e-4
    condition: str = "pseudo-sketch"  # none: the paper's unconditional DDPM
    condition_dropout: float = TrainConfig.condition_dropout
    channels: list[int] = field(default_factory=list)  # empty: the UNet's defaults
    checkpoint_every: int = TrainConfig.checkpoint_every
    seed: int = TrainConfig.seed


@dataclass(frozen=True)
class SimulateSection:
    n: int = 16
    touching_fraction: float = 0.25  # share of nuclei placed against another one
    seed: int = SEED


@dataclass(frozen=True)
class TStartSection:
    # auto: T for a 2D conditional model (the study: t_start = T scored as well as the
    # label-based KLD rule's 600), else kld (3D: T failed, stages.auto_t_start_rule); kld:
    # noise analysis of the real images against the *simulated* sketches (histograms need
    # no pairing, so no labels); T; fixed: `value`
    rule: str = "auto"
    value: int = defaults.T_START
    kld_threshold: float = DEFAULT_KLD_THRESHOLD
    sketches: int = DEFAULT_SIMULATED_SKETCHES  # simulated, compared with the real images


@dataclass(frozen=True)
class SynthesizeSection:
    steps: int = defaults.AUTO_STEPS  # 0: the sampler's default (50; dpm++2m-sde: 20)
    sampler: str = defaults.SAMPLER  # auto: ddpm in 2D, dpm++2m-sde in 3D
    guidance: float = defaults.GUIDANCE  # conditional models only
    guidance_share: float = defaults.GUIDANCE_SHARE  # of the steps, noisiest first
    seed: int = SEED


@dataclass(frozen=True)
class CleanSection:
    # the classical segmenter judges each synthetic image against its own masks; images
    # losing more than these shares are left out (1.0: keep all, the study's best row)
    max_phantom: float = 1.0
    max_vanished: float = 1.0


@dataclass(frozen=True)
class SegmentSection:
    epochs: int = 300
    images_per_epoch: int = 16
    bsize: int = 128
    learning_rate: float = TRAINING.learning_rate
    background_crops: int = TRAINING.background_crops  # nucleus-free real squares, no cells
    brightness_jitter: float = TRAINING.brightness_jitter  # crops' intensities x [1/this, this]
    seed: int = TRAINING.seed


@dataclass(frozen=True)
class PredictSection:
    mode: str = MODE  # 3D volumes: Cellpose's 3D mode, or stitch
    # drop objects under this share of a typical cell; AUTO: segment.config.MIN_SIZE_FRACTION
    min_size_fraction: float = AUTO_FRACTION
    # segment an image whose cells are brighter than the training nuclei again, dimmed
    match_brightness: bool = MATCH_BRIGHTNESS

    def fraction(self) -> float | None:
        """The min_size_fraction for predict (None: the default for the images' dims)."""
        return None if self.min_size_fraction == AUTO_FRACTION else self.min_size_fraction


@dataclass(frozen=True)
class RoundsSection:
    # self-training (pipeline/rounds.py): round k trains on synthetic images + crops of real
    # images pseudo-labelled by round k-1's segmenter; 1: synthetic only
    n: int = 1
    min_iou: float = PSEUDO_LABELS.min_iou  # a cell found again in the mirrored image
    min_size: float = PSEUDO_LABELS.min_size  # of a typical cell
    max_size: float = PSEUDO_LABELS.max_size
    tile_cells: float = PSEUDO_LABELS.tile_cells  # crop side in cell diameters
    mirror_only: str = PSEUDO_LABELS.mirror_only  # "background" or "ignored" in the crops
    # the round-k generator: > 0 fine-tunes the (sketch-conditioned) DDPM this many steps on
    # label-sketches of round k-1's masks of the real images ([train] batch and lr) and
    # synthesizes the simulated sketches again; 0: every round reuses the first synthetic set
    generator_steps: int = 0

    def settings(self) -> PseudoLabelling:
        return PseudoLabelling(
            self.min_iou, self.min_size, self.max_size, self.tile_cells, self.mirror_only
        )


@dataclass(frozen=True)
class Recipe:
    budget: str = "full"
    fit: FitSection = FitSection()
    train: TrainSection = TrainSection()
    simulate: SimulateSection = SimulateSection()
    t_start: TStartSection = TStartSection()
    synthesize: SynthesizeSection = SynthesizeSection()
    clean: CleanSection = CleanSection()
    segment: SegmentSection = SegmentSection()
    predict: PredictSection = PredictSection()
    rounds: RoundsSection = RoundsSection()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SECTIONS = tuple(f.name for f in fields(Recipe) if f.name != "budget")
# a stage per section, in the order they run, then the report (the stages live in run.py;
# the names are here so the CLI can show them without importing numpy)
STAGE_NAMES = (*SECTIONS, "report")
RECIPE_FILE = "pipeline.toml"  # the project's recipe

# Budgets scale the work, nothing else. Times are for the 256 x 256 bundled image on 2 CPU
# cores (the note of issue 22 has the measured stage times).
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    # a plumbing check for tests and CI: every stage runs, nothing is segmented well
    "smoke": {
        "train": {"steps": 4, "batch": 2, "patch": 32, "channels": [8, 16], "checkpoint_every": 2},
        "simulate": {"n": 2},
        "t_start": {"sketches": 1},
        "synthesize": {"steps": 3},
        "segment": {"epochs": 1, "images_per_epoch": 2, "bsize": 64, "background_crops": 1},
        # Cellpose's 3D mode runs three orientations and 3D flows: minutes even for a tiny
        # stack with an untrained network (the 3D mode is tested with the segmenter)
        "predict": {"mode": "stitch"},
    },
    "quick": {
        "train": {"steps": 800},
        "simulate": {"n": 8},
        "synthesize": {"steps": 25},
        "segment": {"epochs": 60, "images_per_epoch": 8},
    },
    "standard": {
        "train": {"steps": 5000},
    },
    "full": {},  # the study's best row as it was measured
}


def resolve(overrides: dict[str, Any], source: str) -> Recipe:
    """The defaults, then the budget's scaling, then OVERRIDES ({section: {key: value}} and
    an optional top-level budget). Unknown sections, keys or budgets raise."""
    budget = overrides.get("budget", Recipe.budget)
    if budget not in BUDGETS:
        raise InputError(f"{source}: budget must be one of {', '.join(BUDGETS)}, got {budget!r}")
    unknown = set(overrides) - set(SECTIONS) - {"budget"}
    if unknown:
        raise InputError(
            f"{source}: unknown recipe section(s) {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(SECTIONS)}"
        )
    recipe = Recipe(budget=budget)
    for layer, where in ((BUDGETS[budget], f"budget {budget}"), (overrides, source)):
        for name in SECTIONS:
            changes = layer.get(name, {})
            if not isinstance(changes, dict):
                raise InputError(f"{where}: [{name}] must be a table of settings")
            section = _apply(getattr(recipe, name), changes, f"{where} [{name}]")
            recipe = replace(recipe, **{name: section})
    recipe.rounds.settings().check()  # now, not after the hours of round 1
    check_brightness_jitter(recipe.segment.brightness_jitter, "[segment] brightness_jitter")
    _check_generator(recipe)
    if recipe.train.condition == "label-sketch":  # the pipeline reads no mask a person drew
        raise InputError("[train] condition must be none or pseudo-sketch, got 'label-sketch'")
    return recipe


def _check_generator(recipe: Recipe) -> None:
    """[rounds] generator_steps: >= 0, with rounds to use it and a DDPM that follows sketches."""
    steps, train = recipe.rounds.generator_steps, recipe.train
    if steps < 0:
        raise InputError(f"[rounds] generator_steps must be >= 0, got {steps}")
    if steps and recipe.rounds.n < 2:
        raise InputError("[rounds] generator_steps is for rounds 2..n; pass --rounds 2 or more")
    if steps and not _follows_sketches(train.model, train.condition):
        raise InputError(
            "[rounds] generator_steps fine-tunes a sketch-conditioned DDPM; "
            f"{'[train] model ' + train.model if train.model else '[train] condition'} is not one"
        )


def _follows_sketches(model: str, condition: str) -> bool:
    """Whether the pipeline's DDPM will follow sketches: [train] condition, or for a model
    made elsewhere its config.json (an unreadable one is left to the train stage to refuse)."""
    from cellsynth_cli.ddpm import bundled

    if not model:
        return condition != "none"
    folder = bundled.resolve(model) if bundled.is_bundled(model) else Path(model)
    try:
        made = json.loads((folder / "config.json").read_text())["train"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    return made.get("condition", "none") != "none"


def _apply(section: Any, changes: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(section)}
    coerced = {}
    for key, value in changes.items():
        if key not in known:
            raise InputError(f"{where}: unknown key {key!r}; valid: {', '.join(known)}")
        coerced[key] = _coerce(getattr(section, key), value, f"{where} {key}")
    return replace(section, **coerced)


def _coerce(default: Any, value: Any, where: str) -> Any:
    """VALUE as the type of DEFAULT (TOML and --set give strings, ints for floats, ...)."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError(value)
                return value.lower() == "true"
            return bool(value)
        if isinstance(default, list):
            items = value.split(",") if isinstance(value, str) else list(value)
            return [int(v) for v in items if str(v).strip()]
        if isinstance(default, int | float | str):
            return type(default)(value)
    except (TypeError, ValueError):
        pass
    raise InputError(f"{where}: expected {type(default).__name__}, got {value!r}")


def typed(overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """OVERRIDES with every value of the type its setting has (--set gives strings), so the
    recipe file keeps numbers as numbers; unknown sections or keys raise."""
    recipe = resolve(overrides, source)
    return {
        key: {k: getattr(getattr(recipe, key), k) for k in value}
        if isinstance(value, dict)
        else value
        for key, value in overrides.items()
    }


def parse_settings(items: list[str]) -> dict[str, Any]:
    """['train.steps=100', 'budget=quick'] -> {'train': {'steps': '100'}, 'budget': 'quick'}."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        section, dot, name = key.strip().partition(".")
        if not dot:
            overrides[section] = value.strip()
            continue
        overrides.setdefault(section, {})[name] = value.strip()
    return overrides


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Overrides TOP over overrides BASE, key by key within each section."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in top.items():
        if isinstance(value, dict):
            merged.setdefault(key, {}).update(value)
        else:
            merged[key] = value
    return merged


def read_overrides(path: Path) -> dict[str, Any]:
    return read_overrides_text(Path(path).read_text(), str(path))


def read_overrides_text(text: str, source: str = "recipe") -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source}: not a valid TOML recipe ({exc})") from None


def to_toml(overrides: dict[str, Any]) -> str:
    """The project's recipe file: the budget and the keys that differ from it."""
    lines = [
        "# cellsynth pipeline recipe: the budget, and each setting that differs from it.",
        "# `cellsynth pipeline --show-recipe` prints every setting; edit here or use --set.",
        f'budget = "{overrides.get("budget", Recipe.budget)}"',
    ]
    for name in SECTIONS:
        values = overrides.get(name) or {}
        if values:
            lines += ["", f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in values.items())]
    return "\n".join(lines) + "\n"


def full_toml(recipe: Recipe) -> str:
    """Every setting of RECIPE as TOML (what --show-recipe prints)."""
    data = recipe.to_dict()
    lines = [f'budget = "{recipe.budget}"']
    for name in SECTIONS:
        lines += ["", f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in data[name].items())]
    return "\n".join(lines) + "\n"
