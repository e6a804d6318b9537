"""3D synthesis at the paper's sizes: seconds per volume and peak memory, against the
reference-style tile loop measured in the same run.

Volumes: a full-size C. elegans sketch (35 x 512 x 708, `simulate celegans`, seed 0) and a full
T. castaneum sketch (13 x 1700 x 2450). Networks: the default 3D UNet with fixed random
weights (speed and memory do not depend on training), either isotropic (z halved at every
level like y/x, so 35 slices are padded to 40) or anisotropic (the C. elegans voxel size
1.0 x 0.09 x 0.09 um: z kept at every level, no z padding; T. castaneum 1.0 x 0.38 x 0.38:
z kept at the first level).

Each configuration runs in its own process (peak RSS = that process's maximum resident
memory, sketch and network included) and times a few reverse steps of `synthesize_volume`
at the default plan (tiles, overlap, precision) or a given tile budget; the median step is
reported and scaled to a volume: 50 steps (respaced DDPM, the 2D default) and 20 steps
(dpm++2m). Every sampler costs one network evaluation per step, so per-step time is
sampler-independent.

Reference-style loop: the public code's way for C. elegans, one 32 x 128 x 128 tile per
network call, 48 tiles per step (2 x 4 x 6 over the volume), each tile its own forward pass:
median of single tile calls x 48, per step, with the same isotropic network, scaled to the
same step counts and to the reference's 600 steps.

Quality vs steps (when a trained 3D model exists: experiment_3d_out/ddpm from
`make experiment-3d`): one centre crop (32 x 128 x 128) of a simulated sketch of that
experiment, synthesized from its t_start with every-step DDPM (the paper's sampler; seeds 0
and 1) and with each fast sampler (seeds 0 and 1); each compared with the every-step
sample of the same seed: PSNR / SSIM on [0, 1], and the KL divergence of the texture (local
std) and gradient-magnitude histograms against the pooled every-step outputs. The
every-step sampler's own seed-to-seed distance is the yardstick.

Run standalone (`python bench/bench_synthesis_3d.py`) or from bench/run.py. Environment:
BENCH_3D_STEPS (timed steps per configuration, default 2), BENCH_3D_SKIP_TRIBOLIUM=1,
BENCH_3D_ONLY=TEXT (only configurations whose name contains TEXT),
BENCH_3D_SKIP_SPEED=1, BENCH_3D_MODEL (a trained 3D run for the quality part).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

CELEGANS_VOXEL = (1.0, 0.09, 0.09)
TRIBOLIUM_VOXEL = (1.0, 0.38, 0.38)
REF_TILE = (32, 128, 128)
REF_TILES_PER_STEP = 48
STEPS_TIMED = int(os.environ.get("BENCH_3D_STEPS", 2))
VOLUME_STEPS = {"ddpm 50": 50, "dpm++2m 20": 20}
REFERENCE_STEPS = 600

# name -> (preset, anisotropic network?, tile budget in voxels or None for the default); a
# "guided" configuration is the sketch-conditioned UNet (2 input channels) at guidance 2
CONFIGS = {
    "celegans iso, guided conditional": ("celegans", False, None),
    "celegans iso, default tiles": ("celegans", False, None),
    "celegans aniso, default tiles": ("celegans", True, None),
    "celegans iso, 2M-voxel tiles": ("celegans", False, 2**21),  # the default before
    "tribolium iso, default tiles": ("tribolium", False, None),
    "tribolium aniso, default tiles": ("tribolium", True, None),
}


def _model(anisotropic: bool, voxel: tuple[float, ...], conditional: bool = False):
    import dataclasses

    import torch

    from cellsynth_cli.ddpm.checkpoint import TrainedModel
    from cellsynth_cli.diffusion.unet import UNet, default_config

    torch.manual_seed(0)
    config = default_config(3, voxel if anisotropic else None)
    if conditional:  # the sketch as a second input channel
        config = dataclasses.replace(config, in_channels=2)
    net = UNet(config).eval()
    with torch.no_grad():  # the zero-initialised output conv would make eps trivial
        net.outc.weight.normal_(0, 0.1)
    return TrainedModel(
        net=net,
        dims=3,
        multiples=net.multiples,
        normalization={"low": 0.0, "high": 1.0},
        config={
            "patch": [32, 128, 128],
            "T": 1000,
            "schedule": "cosine",
            "condition": "pseudo-sketch" if conditional else "none",
        },
        step=0,
        checksum="random-init",
        path=Path("random-init"),
    )


def _sketch(preset: str):
    import numpy as np

    from cellsynth_cli.simulate.config import load_preset
    from cellsynth_cli.simulate.simulators import get_simulator

    config = load_preset(preset)
    made = get_simulator(config.simulator)(config, np.random.default_rng(0))
    return made.sketch, tuple(config.voxel_size)


def run_one(name: str) -> dict:
    """One configuration in this process: per-step seconds, plan, peak RSS."""
    import numpy as np
    import torch
    from timing import set_threads

    from cellsynth_cli.ddpm import synthesize as synth
    from cellsynth_cli.diffusion.unet import tune_cpu_allocator

    set_threads()
    tune_cpu_allocator()
    preset, anisotropic, budget = CONFIGS[name]
    guided = "guided" in name
    sketch, voxel = _sketch(preset)
    model = _model(anisotropic, voxel, conditional=guided)
    if budget is not None:
        synth.AUTO_TILE_VOXELS = budget  # the module reads it at call time
    device = torch.device("cpu")

    def median_step(guidance: float | None) -> float:
        options = synth.SynthesisOptions(
            t_start=600, steps=STEPS_TIMED + 1, sampler="ddpm", guidance=guidance
        )
        stamps: list[float] = []
        start = time.perf_counter()
        synth.synthesize_volume(
            model,
            sketch,
            options,
            0,
            device,
            lambda t: stamps.append(time.perf_counter()),
            condition=sketch if guided else None,
        )
        steps = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)][1:]
        return statistics.median(steps)

    options = synth.SynthesisOptions(t_start=600, steps=STEPS_TIMED + 1)
    plan = synth.synthesis_plan(sketch.shape, model, options, device)
    # a guided step: 2 network calls (cond, uncond); a step at w = 1: one
    step_s = median_step(2.0 if guided else None)
    one_call_s = median_step(1.0) if guided else step_s
    _, tile, _ = synth.tiling_for(sketch.shape, model, options)
    computed = plan["n_tiles"] * int(np.prod(tile))
    return {
        "name": name,
        "shape": list(sketch.shape),
        "tile": plan["tile"],
        "n_tiles": plan["n_tiles"],
        "precision": plan["precision"],
        "voxels": int(np.prod(sketch.shape)),
        "computed_voxels": computed,
        "step_s": step_s,
        "one_call_step_s": one_call_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def run_reference() -> dict:
    """Median seconds of one 32 x 128 x 128 forward pass (batch 1), the reference's unit."""
    import torch
    from timing import median_time, set_threads

    from cellsynth_cli.diffusion.unet import tune_cpu_allocator

    set_threads()
    tune_cpu_allocator()
    model = _model(False, CELEGANS_VOXEL)
    x = torch.randn(1, 1, *REF_TILE)
    t = torch.tensor([500])
    with torch.inference_mode():
        tile_s = median_time(lambda: model.net(x, t), runs=3, warmup=1)
    return {
        "name": "reference-style loop",
        "tile_s": tile_s,
        "step_s": tile_s * REF_TILES_PER_STEP,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


QUALITY_MODEL = Path(os.environ.get("BENCH_3D_MODEL", ROOT / "experiment_3d_out" / "ddpm"))
QUALITY_CROP = (32, 128, 128)
QUALITY_SAMPLERS = [
    ("ddpm", 50),
    ("ddim", 20),
    ("dpm++2m", 10),
    ("dpm++2m", 20),
    ("dpm++2m-sde", 10),
    ("dpm++2m-sde", 20),
]


def quality() -> None:
    """Fast samplers against every-step DDPM with a trained 3D model (see the docstring)."""
    import numpy as np
    import torch
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from timing import set_threads

    from cellsynth_cli import io
    from cellsynth_cli.ddpm.checkpoint import load_model
    from cellsynth_cli.ddpm.synthesize import SynthesisOptions, synthesize_volume
    from cellsynth_cli.diffusion.unet import tune_cpu_allocator
    from cellsynth_cli.measure.metrics import histogram, kl_divergence
    from cellsynth_cli.measure.realism import feature_maps

    if not (QUALITY_MODEL / "checkpoint.pt").exists():
        print(f"quality vs steps: skipped (no trained 3D model at {QUALITY_MODEL})")
        return
    set_threads()
    tune_cpu_allocator()
    device = torch.device("cpu")
    model = load_model(QUALITY_MODEL, device)
    sim = QUALITY_MODEL.parent / "sim"
    synth = QUALITY_MODEL.parent / "synth"
    sketch = io.read_volume(io.list_volumes(sim)[0]).sketch
    t_start = int(io.read_provenance(io.list_volumes(synth)[0]).get("t_start", 600))
    start = [max(0, (n - c) // 2) for n, c in zip(sketch.shape, QUALITY_CROP, strict=True)]
    crop = sketch[tuple(slice(a, a + c) for a, c in zip(start, QUALITY_CROP, strict=True))]
    lo, hi = model.normalization["low"], model.normalization["high"]

    def run(sampler: str, steps: int | None, seed: int) -> tuple[np.ndarray, float]:
        options = SynthesisOptions(t_start=t_start, steps=steps, sampler=sampler)
        began = time.perf_counter()
        out = synthesize_volume(model, crop, options, seed, device)
        return np.clip((out - lo) / (hi - lo), 0, 1), time.perf_counter() - began

    every = {seed: run("ddpm", None, seed) for seed in (0, 1)}
    features = {seed: feature_maps(every[seed][0]) for seed in (0, 1)}
    ranges = {
        name: (0.0, float(np.percentile(features[0][name], 99.5)) * 1.5)
        for name in ("texture", "gradient")
    }

    def hist(images_features: list[dict], name: str) -> np.ndarray:
        return sum(histogram(f[name], 128, ranges[name]) for f in images_features)

    pooled = {name: hist(list(features.values()), name) for name in ranges}

    def scores(image: np.ndarray, seed: int) -> dict:
        ref = every[seed][0]
        f = feature_maps(image)
        return {
            "psnr": peak_signal_noise_ratio(ref, image, data_range=1.0),
            "ssim": structural_similarity(ref, image, data_range=1.0),
            **{
                f"{n}_kld": kl_divergence(pooled[n], histogram(f[n], 128, ranges[n]))
                for n in ranges
            },
        }

    print(
        f"\nquality vs steps: {QUALITY_MODEL} (step {model.step}), t_start {t_start}, crop "
        f"{'x'.join(map(str, QUALITY_CROP))}; every-step DDPM = {t_start} network calls, "
        f"{every[0][1]:.0f} s"
    )
    print(
        f"{'sampler':18s} {'calls':>5s} {'s':>6s} {'PSNR':>6s} {'SSIM':>6s} {'texture KLD':>11s} "
        f"{'gradient KLD':>12s}   (vs every-step DDPM, same seed; mean of seeds 0 and 1)"
    )
    yard = scores(every[1][0], 0)
    yard["texture_kld"] = kl_divergence(
        hist([features[0]], "texture"), hist([features[1]], "texture")
    )
    yard["gradient_kld"] = kl_divergence(
        hist([features[0]], "gradient"), hist([features[1]], "gradient")
    )
    print(
        f"{'every step, seed 1':18s} {t_start:5d} {every[1][1]:6.0f} {yard['psnr']:6.2f} "
        f"{yard['ssim']:6.3f} {yard['texture_kld']:11.4f} {yard['gradient_kld']:12.4f}   "
        "(against seed 0: the sampler's own spread)"
    )
    for sampler, steps in QUALITY_SAMPLERS:
        rows = [run(sampler, steps, seed) for seed in (0, 1)]
        s = [scores(image, seed) for seed, (image, _) in zip((0, 1), rows, strict=True)]
        mean = {k: float(np.mean([r[k] for r in s])) for k in s[0]}
        seconds = float(np.mean([r[1] for r in rows]))
        print(
            f"{sampler:18s} {steps:5d} {seconds:6.0f} {mean['psnr']:6.2f} {mean['ssim']:6.3f} "
            f"{mean['texture_kld']:11.4f} {mean['gradient_kld']:12.4f}",
            flush=True,
        )


def _child(arg: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", arg], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{arg} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if not os.environ.get("BENCH_3D_SKIP_SPEED"):
        speed()
    quality()


def speed() -> None:
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, timed steps "
        f"per configuration: {STEPS_TIMED}",
        flush=True,
    )
    reference = _child("reference")
    print(
        f"reference-style loop: {reference['tile_s']:.2f} s per 32x128x128 tile call, "
        f"{REF_TILES_PER_STEP} tiles -> {reference['step_s']:.1f} s per step, "
        f"{reference['step_s'] * REFERENCE_STEPS / 3600:.1f} h per volume at "
        f"{REFERENCE_STEPS} steps",
        flush=True,
    )
    only = os.environ.get("BENCH_3D_ONLY", "")  # e.g. "tribolium": configurations naming it
    names = [
        n
        for n in CONFIGS
        if only in n and not (os.environ.get("BENCH_3D_SKIP_TRIBOLIUM") and "tribolium" in n)
    ]
    header = (
        f"{'configuration':32s} {'tiles':>16s} {'computed/volume':>15s} {'s/step':>7s} "
        + " ".join(f"{k + ' (s)':>13s}" for k in VOLUME_STEPS)
        + f" {'vs ref (same steps)':>19s} {'peak RSS':>9s}"
    )
    print(header, flush=True)
    for name in names:
        r = _child(name)
        tiles = f"{r['n_tiles']} x {'x'.join(map(str, r['tile']))}"
        ratio = r["computed_voxels"] / r["voxels"]
        per_volume = " ".join(f"{r['step_s'] * k:13.0f}" for k in VOLUME_STEPS.values())
        speedup = (
            f"{reference['step_s'] / r['step_s']:18.2f}x" if "celegans" in name else f"{'-':>19s}"
        )
        print(
            f"{name:32s} {tiles:>16s} {ratio:15.2f} {r['step_s']:7.1f} {per_volume} {speedup} "
            f"{r['peak_rss_gb']:8.2f}G",
            flush=True,
        )
        if "guided" in name:
            print(guided_volume_line(r), flush=True)


# settings of the guided conditional model timed per volume: (label, steps, guided share)
GUIDED_SETTINGS = (
    ("ddpm 50, guided at every step", 50, 1.0),
    ("ddpm 50, --guidance-share 0.1", 50, 0.1),
    ("dpm++2m-sde 20, --guidance-share 0.1", 20, 0.1),
)


def guided_volume_line(r: dict) -> str:
    """Seconds per volume of the guided conditional model at each of GUIDED_SETTINGS: a guided
    step costs two calls, the others one (every sampler makes one evaluation per step)."""
    import math

    guided, plain = r["step_s"], r["one_call_step_s"]
    lines = [
        f"  guided conditional: {guided:.1f} s per guided step (2 calls), {plain:.1f} s per "
        "one-call step; per volume (target: <= 120 s):"
    ]
    for label, steps, share in GUIDED_SETTINGS:
        n_guided = math.ceil(share * steps)
        seconds = n_guided * guided + (steps - n_guided) * plain
        lines.append(f"    {label:40s} {seconds:6.0f} s ({seconds / 60:.1f} min)")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        which = sys.argv[2]
        result = run_reference() if which == "reference" else run_one(which)
        print(json.dumps(result))
    else:
        main()
