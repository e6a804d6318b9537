"""The `noise-analysis` stage: pick t_start by comparing forward-noised real images and sketches.

Forward: for each t, noise every real image and every sketch (made from the same real
annotations) with q(x_t | x_0), histogram both sets on common bins and compare them (KLD,
Bhattacharyya). Small t keeps structure, large t makes the distributions alike; t_start is
the smallest t at which the sketch's distribution is close enough to the real one.
Backward (with a model): run the reverse process from each noised input and score the
result against the real image (PSNR / SSIM / MAE), as the paper's Fig. 2 (bottom).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cellsynth_cli import io
from cellsynth_cli.ddpm.noise_defaults import (
    DEFAULT_BACKWARD_STEPS,
    DEFAULT_BINS,
    DEFAULT_KLD_THRESHOLD,
    DEFAULT_QC_MAX_KLD,
    DEFAULT_SIMULATED_SKETCHES,
    DEFAULT_TIMESTEPS,
    HIST_RANGE,
)
from cellsynth_cli.defaults import DEVICE, SEED
from cellsynth_cli.diffusion.process import q_sample
from cellsynth_cli.diffusion.schedule import cosine_schedule
from cellsynth_cli.errors import InputError
from cellsynth_cli.io.intensity import robust_range, to_unit, unit_to_model
from cellsynth_cli.measure.metrics import (
    bhattacharyya_distance,
    histogram,
    kl_divergence,
    mae,
    psnr,
    ssim,
)

# backward analysis: each metric of the result denoised from the real image and the sketch
BACKWARD_SCORES = tuple(
    f"{start}_{m}" for start in ("real", "sketch") for m in ("psnr", "ssim", "mae")
)


@dataclass
class NoiseAnalysis:
    timesteps: list[int]
    kld: list[float]
    bhattacharyya: list[float]
    recommended_t_start: int | None
    kld_threshold: float
    n_volumes: int
    normalization: dict[str, float]
    backward: list[dict] = field(default_factory=list)
    qc: list[dict] = field(default_factory=list)  # phantom / vanished per t (with --qc)
    qc_t_start: int | None = None
    qc_max_kld: float | None = None
    # False: real images and sketches of other volumes (simulated), compared as sets
    paired: bool = True

    def to_dict(self) -> dict:
        return {
            "timesteps": self.timesteps,
            "kld": self.kld,
            "bhattacharyya": self.bhattacharyya,
            "recommended_t_start": self.recommended_t_start,
            "kld_threshold": self.kld_threshold,
            "n_volumes": self.n_volumes,
            "normalization": self.normalization,
            "backward": self.backward,
            "qc": self.qc,
            "qc_t_start": self.qc_t_start,
            "qc_max_kld": self.qc_max_kld,
            "paired": self.paired,
        }


def paired_volumes(images: Path, sketches: Path | None) -> list[tuple[io.Volume, io.Volume]]:
    """Real volumes and sketch volumes paired by name (unpaired ones are left out).

    Without SKETCHES, each real volume's sketch is made from its own masks (as
    `simulate from-labels` does), in memory.
    """
    real = {v.name: v for v in io.read_volumes(images)}
    if sketches is None:
        sk = {name: _sketch_of(volume, images) for name, volume in real.items()}
    else:
        sk = {v.name: v for v in io.read_volumes(sketches)}
    names = sorted(set(real) & set(sk))
    if not names:
        raise InputError(
            f"no volume names in common between {images} ({', '.join(sorted(real)) or 'none'}) "
            f"and {sketches} ({', '.join(sorted(sk)) or 'none'}); make the sketches with "
            "`cellsynth simulate from-labels --data IMAGES`"
        )
    pairs = []
    for name in names:
        r, s = real[name], sk[name]
        if r.image is None:
            raise InputError(f"{images}/{name}: no intensity image")
        if s.sketch is None:
            raise InputError(f"{sketches}/{name}: no sketch")
        if r.image.shape != s.sketch.shape:
            raise InputError(f"{name}: image {r.image.shape} and sketch {s.sketch.shape} differ")
        pairs.append((r, s))
    return pairs


def _pairs_or_none(images: Path, sketches: Path | None) -> list[tuple[io.Volume, io.Volume]] | None:
    """Real volumes paired with their sketches by name, or None for the unpaired analysis:
    images without masks and no sketches given, or sketches of other volumes (simulated)."""
    if sketches is None:
        if not any(v.masks is not None for v in _images_of(images)):
            return None
        return paired_volumes(images, None)
    real = {io.volume_name(p) for p in io.list_volumes(images)}
    if not real & {io.volume_name(p) for p in io.list_volumes(sketches)}:
        return None
    return paired_volumes(images, sketches)


def _images_of(images: Path) -> list[io.Volume]:
    volumes = [v for v in io.read_volumes(images)]
    missing = [v.name for v in volumes if v.image is None]
    if missing:
        raise InputError(f"{images}/{missing[0]}: no intensity image")
    return volumes


def _unpaired_sketches(
    images: Path, sketches: Path | None, max_volumes: int | None, seed: int
) -> list[np.ndarray]:
    """The sketches of SKETCHES (simulated ones), or, without labels or sketches, sketches
    simulated in memory from a nuclei preset fitted to IMAGES (as `simulate fit` does)."""
    if sketches is not None:
        found = [v.sketch for v in io.read_volumes(sketches) if v.sketch is not None]
        if not found:
            raise InputError(f"{sketches}: no sketches (`cellsynth simulate` output)")
        return found[: max_volumes or None]
    from cellsynth_cli.simulate.fit import fit_nuclei
    from cellsynth_cli.simulate.simulators import get_simulator

    config = fit_nuclei(images).config
    simulator = get_simulator(config.simulator)
    children = np.random.SeedSequence(seed).spawn(max_volumes or DEFAULT_SIMULATED_SKETCHES)
    return [simulator(config, np.random.default_rng(child)).sketch for child in children]


def forward_analysis(
    real: list[np.ndarray],
    sketch: list[np.ndarray],
    timesteps: list[int],
    bins: int,
    seed: int,
    on_progress: Callable[[str], None] | None = None,
) -> tuple[list[float], list[float]]:
    """KLD and Bhattacharyya distance of the noised real and sketch histograms at each t
    (model scale). The sets need not pair: each is histogrammed as a whole."""
    schedule = cosine_schedule(1000)
    kld, bd = [], []
    for t in timesteps:
        gen = torch.Generator().manual_seed(seed + t)
        counts = (np.zeros(bins), np.zeros(bins))
        # one real image, then one sketch, ...: the noise of a pair does not depend on the
        # other pairs
        for arrays in itertools.zip_longest(real, sketch):
            for x0, acc in zip(arrays, counts, strict=True):
                if x0 is None:
                    continue
                x = torch.from_numpy(x0)
                noise = torch.randn(x.shape, generator=gen)
                xt = q_sample(x[None], torch.tensor([t]), noise[None], schedule)[0]
                acc += histogram(xt.numpy(), bins, HIST_RANGE)
        kld.append(kl_divergence(*counts))
        bd.append(bhattacharyya_distance(*counts))
        if on_progress:
            on_progress(f"forward t={t}")
    return kld, bd


def _sketch_of(volume: io.Volume, images: Path) -> io.Volume:
    from cellsynth_cli.simulate.sketch_from_labels import sketch_from_labels

    if volume.masks is None or volume.image is None:
        raise InputError(
            f"{images}/{volume.name}: no masks to make a sketch from; give --sketches "
            "(`cellsynth simulate from-labels` output)"
        )
    try:
        sketch, _ = sketch_from_labels(volume.image, volume.masks)
    except InputError as exc:
        raise InputError(f"{images}/{volume.name}: {exc}") from None
    return io.Volume(name=volume.name, sketch=sketch, masks=volume.masks)


def recommend_t_start(timesteps: list[int], kld: list[float], threshold: float) -> int | None:
    for t, value in zip(timesteps, kld, strict=True):
        if t > 0 and value < threshold:
            return t
    return None


def noise_analysis(
    images: Path,
    sketches: Path | None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    bins: int = DEFAULT_BINS,
    kld_threshold: float = DEFAULT_KLD_THRESHOLD,
    seed: int = SEED,
    model_run: Path | None = None,
    backward_steps: int | None = DEFAULT_BACKWARD_STEPS,
    max_volumes: int | None = None,
    crop: tuple[int, ...] | None = None,
    device: str = DEVICE,
    on_progress: Callable[[str], None] | None = None,
    qc_sketches: Path | None = None,
    qc_max_kld: float = DEFAULT_QC_MAX_KLD,
) -> NoiseAnalysis:
    """The forward analysis, and with a model the backward one; with QC_SKETCHES (simulated
    sketches and their masks) also the QC-aware choice of t_start (qc_analysis)."""
    if qc_sketches is not None and model_run is None:
        raise InputError("--qc needs --model (it synthesizes the sketches at each t)")
    if bins < 2:
        raise InputError(f"--bins must be >= 2, got {bins}")
    if not timesteps or any(not 0 <= t <= 1000 for t in timesteps):
        raise InputError(f"--t values must be in 0..1000, got {timesteps}")
    pairs = _pairs_or_none(images, sketches)
    model = None
    if model_run is not None:
        from cellsynth_cli.ddpm.checkpoint import load_model
        from cellsynth_cli.runtime.device import pick_device

        model = load_model(model_run, pick_device(device))
    if pairs is None:  # unpaired: the two sets' histograms are compared as they are
        real_images = [v.image for v in _images_of(images)][: max_volumes or None]
        sketches_in = _unpaired_sketches(images, sketches, max_volumes, seed)
    else:
        pairs = pairs[: max_volumes or None]
        real_images = [r.image for r, _ in pairs]
        sketches_in = [s.sketch for _, s in pairs]
    if model is not None:
        norm = dict(model.normalization)
    else:
        lo, hi = robust_range(real_images)
        norm = {"low": lo, "high": hi}
    real = [unit_to_model(to_unit(image, norm["low"], norm["high"])) for image in real_images]
    sketch = [unit_to_model(np.clip(s, 0, 1)) for s in sketches_in]
    timesteps = sorted(set(timesteps))
    kld, bd = forward_analysis(real, sketch, timesteps, bins, seed, on_progress)
    result = NoiseAnalysis(
        timesteps=timesteps,
        kld=kld,
        bhattacharyya=bd,
        recommended_t_start=recommend_t_start(timesteps, kld, kld_threshold),
        kld_threshold=kld_threshold,
        n_volumes=len(real),
        normalization=norm,
        paired=pairs is not None,
    )
    if model is not None and pairs is not None:  # the backward scores need pairs
        result.backward = backward_analysis(
            model, real, sketch, timesteps, backward_steps, crop, seed, on_progress
        )
    if qc_sketches is not None:
        volumes = [v for v in io.read_volumes(qc_sketches)][: max_volumes or None]
        result.qc = qc_analysis(model, volumes, timesteps, backward_steps, crop, seed, on_progress)
        result.qc_max_kld = qc_max_kld
        result.qc_t_start = recommend_t_start_qc(timesteps, kld, result.qc, qc_max_kld)
    return result


def qc_analysis(
    model,
    volumes: list[io.Volume],
    timesteps: list[int],
    steps: int | None,
    crop: tuple[int, ...] | None,
    seed: int,
    on_progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """For each t > 0: synthesize every simulated sketch from t and measure how many of its
    cells the result keeps (phantom / vanished, phantom_vanished)."""
    from cellsynth_cli.ddpm.synthesize import SynthesisOptions, synthesize_volume
    from cellsynth_cli.measure.qc import phantom_vanished

    usable = [v for v in volumes if v.sketch is not None and v.masks is not None]
    if not usable:
        raise InputError("--qc: no simulated sketches with masks there (`cellsynth simulate`)")
    device = next(model.net.parameters()).device
    rows = []
    for t in timesteps:
        if t == 0:
            continue
        options = SynthesisOptions(t_start=t, steps=min(steps, t) if steps else None, batch=4)
        shares: dict[str, list[float]] = {"phantom": [], "vanished": []}
        for i, volume in enumerate(usable):
            sketch, masks = _centre_crop(volume.sketch, crop), _centre_crop(volume.masks, crop)
            image = synthesize_volume(model, sketch, options, seed + i, device, condition=sketch)
            counts = phantom_vanished(image, masks, volume.voxel_size)
            for key in shares:
                shares[key].append(counts[key])
        row = {"t": t, **{k: float(np.mean(v)) for k, v in shares.items()}}
        rows.append(row)
        if on_progress:
            on_progress(f"qc t={t}: phantom {row['phantom']:.0%}, vanished {row['vanished']:.0%}")
    return rows


def recommend_t_start_qc(
    timesteps: list[int], kld: list[float], qc: list[dict], max_kld: float
) -> int | None:
    """Among the t whose KLD is at most max_kld, the one that loses the fewest cells
    (phantom + vanished; ties go to the larger t, the more realistic)."""
    kld_at = dict(zip(timesteps, kld, strict=True))
    candidates = [row for row in qc if kld_at[row["t"]] <= max_kld]
    if not candidates:
        return None
    best = min(candidates, key=lambda row: (row["phantom"] + row["vanished"], -row["t"]))
    return int(best["t"])


def _centre_crop(array: np.ndarray, crop: tuple[int, ...] | None) -> np.ndarray:
    if crop is None:
        return array
    if len(crop) != array.ndim:
        raise InputError(f"--crop {crop} needs {array.ndim} sizes")
    sl = tuple(
        slice(max(0, (n - c) // 2), max(0, (n - c) // 2) + c)
        for n, c in zip(array.shape, crop, strict=True)
    )
    return array[sl]


def backward_analysis(
    model,
    real: list[np.ndarray],
    sketch: list[np.ndarray],
    timesteps: list[int],
    steps: int | None,
    crop: tuple[int, ...] | None,
    seed: int,
    on_progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """For each t: denoise noised real images and noised sketches; score against the real."""
    from cellsynth_cli.ddpm.synthesize import SynthesisOptions, synthesize_volume
    from cellsynth_cli.io.intensity import model_to_unit

    device = next(model.net.parameters()).device
    rows = []
    for t in timesteps:
        if t == 0:
            continue
        scores: dict[str, list[float]] = {k: [] for k in BACKWARD_SCORES}
        options = SynthesisOptions(t_start=t, steps=min(steps, t) if steps else None, batch=4)
        for i, (r, s) in enumerate(zip(real, sketch, strict=True)):
            r_c, s_c = _centre_crop(r, crop), _centre_crop(s, crop)
            target = model_to_unit(r_c)
            for kind, start in (("real", r_c), ("sketch", s_c)):
                # a conditional model follows the sketch from either start
                out = synthesize_volume(
                    model,
                    model_to_unit(start),
                    options,
                    seed + i,
                    device,
                    condition=model_to_unit(s_c),
                )
                lo, hi = model.normalization["low"], model.normalization["high"]
                out_unit = np.clip((out - lo) / (hi - lo), 0, 1)
                scores[f"{kind}_psnr"].append(psnr(out_unit, target, 1.0))
                scores[f"{kind}_ssim"].append(ssim(out_unit, target, 1.0))
                scores[f"{kind}_mae"].append(mae(out_unit, target))
        rows.append({"t": t, **{k: float(np.mean(v)) for k, v in scores.items()}})
        if on_progress:
            on_progress(f"backward t={t}")
    return rows


def save_plot(result: NoiseAnalysis, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if result.backward else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 3.8))
    axes = np.atleast_1d(axes)
    ax = axes[0]
    ax.plot(result.timesteps, result.kld, "o-", label="KLD (real || sketch)")
    ax.plot(result.timesteps, result.bhattacharyya, "s-", label="Bhattacharyya distance")
    ax.axhline(result.kld_threshold, color="grey", ls=":", label="KLD threshold")
    if result.recommended_t_start is not None:
        ax.axvline(
            result.recommended_t_start,
            color="red",
            ls="--",
            label=f"t_start = {result.recommended_t_start}",
        )
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("t")
    ax.set_title("forward: histogram distance of noised real vs sketch")
    ax.legend(fontsize=8)
    if result.backward:
        ax = axes[1]
        ts = [row["t"] for row in result.backward]
        ax.plot(ts, [row["real_ssim"] for row in result.backward], "o-", label="from real")
        ax.plot(ts, [row["sketch_ssim"] for row in result.backward], "s-", label="from sketch")
        ax.set_xlabel("t")
        ax.set_ylabel("SSIM to the real image")
        ax.set_title("backward: denoised from t")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def result_files(out: Path | None, overwrite: bool) -> list[Path]:
    """The JSON and plot that -o OUT will hold; refused before any work when they exist."""
    if out is None:
        return []
    if out.exists() and not out.is_dir():
        raise InputError(f"-o {out} exists and is not a directory")
    files = [out / "noise_analysis.json", out / "noise_analysis.png"]
    existing = [f for f in files if f.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]} already exists (pass --overwrite to replace it)")
    return files


def write_result(result: NoiseAnalysis, files: list[Path]) -> dict:
    """Write the result's JSON and plot to FILES (from result_files); its dict, with the files."""
    data = result.to_dict()
    if files:
        json_file, plot_file = files
        io.write_text(json_file, json.dumps(data, indent=2), overwrite=True)
        with io.atomic_file(plot_file, overwrite=True) as tmp:
            save_plot(result, tmp)
        data["files"] = [str(f) for f in files]
    return data


def parse_timesteps(text: str) -> list[int]:
    """--t: comma-separated integers."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--t expects integers like 0,100,200, got {text!r}") from None
