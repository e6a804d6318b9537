"""Synthesis speed: our batched, step-wise blended tile sampler against the naive tile loop.

One network (the default 2D UNet, random-initialised with a fixed seed; the zero-initialised
final convolution is re-drawn so eps is non-trivial) and one sketch (a 2D ``hela`` simulation,
512 x 768, seed 0) for every measurement. Everything runs under ``torch.inference_mode()``
after ``tune_cpu_allocator()``, as ``synthesize`` does on CPU.

1. Sampler timing (respaced DDPM, the same timesteps for every row):
   - ours: ``synthesize_volume`` -> ``sample`` + ``TiledPredictor`` (all tiles of a step
     evaluated in batches, eps blended before the step), tile 256^2, overlap 64, batch 1..12;
     plus the existing ``--tile`` option set to the whole padded image (one forward a step);
   - naive, same grid: every tile of our grid sampled alone (batch 1, its own noise, the whole
     reverse loop), finished tiles blended with our weights: isolates batching + blending;
   - naive, reference grid: the public code's way (stegmaierj/DiffusionModelsForImageSynthesis,
     apply_script_diffusion.py + MeristemH5Tiler, settings of notebooks/jupyter_apply_script:
     overlap 20, crop 20 -> tile stride 256 - 20 - 2*20 = 196 from -40, reflect padding,
     distance-transform fading map with the crop zeroed, outputs clipped to [-1, 1]).
   - EXP rows (experiments, not library behaviour): the same path with bf16 autocast on CPU,
     at the default tile and with the whole image as one tile.
   Each row: median of REPEATS interleaved runs; the speed-up is naive-ref / ours.
2. Diagnostics for where the time goes: UNet forward per 256^2 tile at several batch sizes,
   TiledPredictor's own per-step cost (a null network), and, as an experiment, bf16 autocast
   on CPU (the library autocasts only on CUDA).
3. Quality vs speed: ``--steps 50`` (and DDIM 50) against every-step DDPM from the same t_start,
   sketch and seed on a 256 x 256 crop; PSNR / SSIM on images mapped to [0, 1] with the
   model's intensity range (skimage.metrics, data_range = 1). Uses the trained demo model
   demo_out/run/checkpoint.pt when it exists, otherwise the random network (then it compares
   sampler behaviour only, not image realism).

Run standalone (``python bench/bench_synthesis.py``) or from bench/run.py.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cellsynth_cli.checkpoint import TrainedModel, load_model  # noqa: E402
from cellsynth_cli.config import load_preset, replace  # noqa: E402
from cellsynth_cli.diffusion.process import sample  # noqa: E402
from cellsynth_cli.diffusion.schedule import make_schedule  # noqa: E402
from cellsynth_cli.diffusion.unet import UNet, default_config, tune_cpu_allocator  # noqa: E402
from cellsynth_cli.intensity import from_unit, model_to_unit, to_unit, unit_to_model  # noqa: E402
from cellsynth_cli.simulators import get_simulator  # noqa: E402
from cellsynth_cli.synthesize import SynthesisOptions, synthesize_volume, tiling_for  # noqa: E402
from cellsynth_cli.tiling import TiledPredictor, blend_weights, tile_grid  # noqa: E402

SHAPE = (512, 768)  # the sketch for the timing part
TILE = (256, 256)  # the paper's 2D training patch = our default tile
TIMING_T_START = 600  # the paper's t_start ...
TIMING_STEPS = 10  # ... respaced to 10 DDPM steps (same timesteps for every sampler)
REPEATS = 3
BATCHES = (1, 2, 4, 12)
REF_OVERLAP, REF_CROP = 20, 20  # public reference, notebooks/jupyter_apply_script.ipynb
QUALITY_SHAPE = (256, 256)
QUALITY_T_START = 400  # the public code's t_start (the paper's is 600)
QUALITY_STEPS = 50
DEMO_CHECKPOINT = ROOT / "demo_out" / "run" / "checkpoint.pt"
CPU = torch.device("cpu")


# ------------------------------------------------------------------------------ set-up
def set_threads() -> int:
    """One intra-op thread per available core (never more: oversubscription kills conv speed)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    n = max(1, min(torch.get_num_threads(), cores))
    torch.set_num_threads(n)
    return n


def random_model(seed: int = 0) -> TrainedModel:
    """Default 2D UNet with fixed random weights; the zero-init output conv re-drawn."""
    torch.manual_seed(seed)
    net = UNet(default_config(2))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        net.outc.weight.copy_(torch.randn(net.outc.weight.shape, generator=gen) * 0.1)
    net.eval()
    return TrainedModel(
        net=net,
        dims=2,
        multiple=net.multiple,
        normalization={"low": 0.0, "high": 1.0},
        config={"patch": list(TILE), "T": 1000, "schedule": "cosine"},
        step=0,
        checksum="random-init",
        path=Path("random-init"),
    )


def hela_sketch(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    cfg = replace(load_preset("hela"), {"shape": shape}, "bench")
    return get_simulator(cfg.simulator)(cfg, np.random.default_rng(seed)).sketch


def _median_time(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ------------------------------------------------------------------------------ samplers
def run_ours(model, sketch, batch, t_start, steps, tile=None, seed=0) -> np.ndarray:
    opts = SynthesisOptions(t_start=t_start, steps=steps, tile=tile, batch=batch, seed=seed)
    return synthesize_volume(model, sketch, opts, seed, CPU)


def run_ours_bf16_experiment(model, sketch, batch, t_start, steps, tile=None, seed=0):
    """EXPERIMENT (not library behaviour): synthesize_volume's path with bf16 autocast on CPU.

    The library autocasts only on CUDA; this mirrors synthesize_volume (same tiling, predictor,
    sampler and noise) with torch.autocast("cpu", bfloat16) around the network.
    """
    opts = SynthesisOptions(t_start=t_start, steps=steps, tile=tile, batch=batch, seed=seed)
    padded, tile, overlap = tiling_for(sketch.shape, model, opts)
    guide = unit_to_model(np.clip(sketch, 0.0, 1.0))
    pads = [(0, p - s) for s, p in zip(sketch.shape, padded, strict=True)]
    guide = np.pad(guide, pads, mode="reflect") if any(p[1] for p in pads) else guide
    x0_guide = torch.from_numpy(np.ascontiguousarray(guide))[None, None]

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.net(x, t).float()

    predictor = TiledPredictor(net, padded, tile, overlap, batch, CPU)
    schedule = make_schedule(model.config.get("schedule", "cosine"), model.config.get("T", 1000))
    gen = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        x = sample(predictor, x0_guide, t_start, schedule, steps, "ddpm", gen)
    result = x[0, 0].numpy()[tuple(slice(0, s) for s in sketch.shape)]
    norm = model.normalization
    return from_unit(model_to_unit(result), norm["low"], norm["high"])


def _sample_tile(model, guide_tile: np.ndarray, t_start, steps, seed) -> torch.Tensor:
    """The whole reverse loop on one tile alone, batch 1, its own noise."""
    schedule = make_schedule(model.config.get("schedule", "cosine"), model.config.get("T", 1000))
    x0 = torch.from_numpy(np.ascontiguousarray(guide_tile))[None, None]

    def eps(x: torch.Tensor, t: int) -> torch.Tensor:
        return model.net(x, torch.full((1,), t, dtype=torch.long))

    gen = torch.Generator().manual_seed(seed)
    return sample(eps, x0, t_start, schedule, steps, "ddpm", gen)[0, 0]


def run_naive_same_grid(model, sketch, t_start, steps, seed=0) -> np.ndarray:
    """Naive loop on our tile grid, finished tiles blended with our (normalised) weights."""
    padded, tile, overlap = tiling_for(sketch.shape, model, SynthesisOptions())
    guide = unit_to_model(np.clip(sketch, 0.0, 1.0))
    pads = [(0, p - s) for s, p in zip(sketch.shape, padded, strict=True)]
    guide = np.pad(guide, pads, mode="reflect") if any(p[1] for p in pads) else guide
    tiles = tile_grid(padded, tile, overlap)
    weights = blend_weights(padded, tiles)
    out = torch.zeros(padded)
    with torch.inference_mode():
        for k, (sl, w) in enumerate(zip(tiles, weights, strict=True)):
            x = _sample_tile(model, guide[sl], t_start, steps, seed + k)
            out[sl] += x * torch.from_numpy(w)
    result = out.numpy()[tuple(slice(0, s) for s in sketch.shape)]
    norm = model.normalization
    return from_unit(model_to_unit(result), norm["low"], norm["high"])


def reference_fading_map(patch: tuple[int, ...], crop: int) -> np.ndarray:
    """MeristemH5Tiler.get_fading_map: distance to the (cropped) patch border, max 1."""
    from scipy.ndimage import distance_transform_edt

    fade = np.zeros(patch, dtype=np.float32)
    fade[tuple(slice(crop, p - crop) for p in patch)] = 1
    fade = distance_transform_edt(np.pad(fade, 1)).astype(np.float32)[(slice(1, -1),) * len(patch)]
    return fade / fade.max()


def reference_starts(size: int, patch: int, overlap: int, crop: int) -> list[int]:
    """MeristemH5Tiler.set_data_idx: patch starts along one axis (may be negative)."""
    stride = max(patch - overlap - 2 * crop, 1)
    n = int(np.ceil((size + overlap + crop) / stride))
    return [k * stride - overlap - crop for k in range(n)]


def reference_grid(shape, patch=TILE, overlap=REF_OVERLAP, crop=REF_CROP):
    return [reference_starts(s, p, overlap, crop) for s, p in zip(shape, patch, strict=True)]


def run_naive_reference(model, sketch, t_start, steps, seed=0) -> np.ndarray:
    """The public code's loop: reflect-padded patches, each sampled alone, faded and averaged."""
    starts = reference_grid(sketch.shape)
    before = [-s[0] for s in starts]
    after = [s[-1] + p - n for s, p, n in zip(starts, TILE, sketch.shape, strict=True)]
    guide = unit_to_model(np.clip(sketch, 0.0, 1.0))
    guide = np.pad(guide, list(zip(before, after, strict=True)), mode="reflect")
    fade = torch.from_numpy(reference_fading_map(TILE, REF_CROP))
    acc = torch.zeros(guide.shape)
    norm_map = torch.zeros(guide.shape)
    k = 0
    with torch.inference_mode():
        for y in starts[0]:
            for x in starts[1]:
                sl = (slice(y + before[0], y + before[0] + TILE[0]),) + (
                    slice(x + before[1], x + before[1] + TILE[1]),
                )
                tile = _sample_tile(model, guide[sl], t_start, steps, seed + k).clamp(-1, 1)
                acc[sl] += tile * fade
                norm_map[sl] += fade
                k += 1
    result = (acc / norm_map.clamp(min=1e-5)).numpy()
    result = result[tuple(slice(b, b + n) for b, n in zip(before, sketch.shape, strict=True))]
    norm = model.normalization
    return from_unit(model_to_unit(result), norm["low"], norm["high"])


# ------------------------------------------------------------------------------ parts
def part_timing(model: TrainedModel, sketch: np.ndarray) -> list[dict]:
    padded, tile, overlap = tiling_for(sketch.shape, model, SynthesisOptions())
    n_ours = len(tile_grid(padded, tile, overlap))
    n_ref = int(np.prod([len(s) for s in reference_grid(sketch.shape)]))
    t0, k = TIMING_T_START, TIMING_STEPS
    configs: list[tuple[str, int, Callable[..., np.ndarray]]] = []
    for b in BATCHES:
        configs.append(
            (f"ours batch {b}", n_ours, lambda ts, st, b=b: run_ours(model, sketch, b, ts, st))
        )
    configs.append(
        ("ours tile=whole image", 1, lambda ts, st: run_ours(model, sketch, 1, ts, st, tile=padded))
    )
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        configs.append(
            (
                "EXP ours b4 + bf16",
                n_ours,
                lambda ts, st: run_ours_bf16_experiment(model, sketch, 4, ts, st),
            )
        )
        configs.append(
            (
                "EXP whole image + bf16",
                1,
                lambda ts, st: run_ours_bf16_experiment(model, sketch, 1, ts, st, tile=padded),
            )
        )
    configs.append(
        ("naive, our grid", n_ours, lambda ts, st: run_naive_same_grid(model, sketch, ts, st))
    )
    configs.append(
        ("naive, ref. grid", n_ref, lambda ts, st: run_naive_reference(model, sketch, ts, st))
    )

    for _, _, fn in configs:  # warm-up: one reverse step each (oneDNN primitives, heap)
        fn(1, None)
    times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for _ in range(REPEATS):  # interleaved: the machine is shared and noisy
        for name, _, fn in configs:
            start = time.perf_counter()
            fn(t0, k)
            times[name].append(time.perf_counter() - start)

    base = statistics.median(times["naive, ref. grid"])
    rows = []
    print(
        f"\n[1] sampler timing: hela sketch {SHAPE[0]}x{SHAPE[1]}, t_start {t0}, {k} DDPM steps, "
        f"tile {TILE[0]}^2; median of {REPEATS} interleaved runs"
    )
    print(
        f"    ours: overlap {overlap[0]} -> {n_ours} tiles; reference grid: overlap "
        f"{REF_OVERLAP} + crop {REF_CROP} -> {n_ref} tiles"
    )
    header = (
        f"    {'sampler':<24} {'tiles':>5} {'s (median)':>10} {'min..max':>13} "
        f"{'ms/tile-fwd':>11} {'vs ref':>7}"
    )
    print(header)
    print("    " + "-" * (len(header) - 4))
    for name, n_tiles, _ in configs:
        med = statistics.median(times[name])
        fwd = n_tiles * k
        per = med / fwd * 1e3 if n_tiles > 1 else float("nan")
        row = {
            "sampler": name,
            "tiles": n_tiles,
            "seconds": med,
            "all": times[name],
            "ms_per_tile_forward": per,
            "speedup_vs_ref": base / med,
        }
        rows.append(row)
        print(
            f"    {name:<24} {n_tiles:>5} {med:>10.2f} "
            f"{min(times[name]):>6.2f}..{max(times[name]):<6.2f} {per:>11.1f} {base / med:>6.2f}x"
        )
    best = min(
        (r for r in rows if r["sampler"].startswith("ours batch")), key=lambda r: r["seconds"]
    )
    same = statistics.median(times["naive, our grid"])
    print(
        f"    best default-tile batch: {best['sampler']} -> {best['speedup_vs_ref']:.2f}x vs the "
        f"reference loop, {same / best['seconds']:.2f}x vs the naive loop on our grid (target 3x)"
    )
    print(
        "    EXP = experiment, not what the library does (it autocasts on CUDA only); "
        "whole image = --tile set to the padded image (GroupNorm statistics then span the "
        "whole image, not a training-sized patch)"
    )
    return rows


def part_diagnostics(model: TrainedModel) -> dict:
    net = model.net
    gen = torch.Generator().manual_seed(0)
    out: dict = {"forward_ms_per_tile": {}}
    print("\n[2] where the time goes (median of 5, interleaved)")
    xs = {b: torch.randn((b, 1, *TILE), generator=gen) for b in BATCHES}
    ts = {b: torch.full((b,), 300, dtype=torch.long) for b in BATCHES}
    with torch.inference_mode():
        for b in BATCHES:
            net(xs[b], ts[b])
        per: dict[int, list[float]] = {b: [] for b in BATCHES}
        for _ in range(5):
            for b in BATCHES:
                start = time.perf_counter()
                net(xs[b], ts[b])
                per[b].append((time.perf_counter() - start) / b)
        line = ", ".join(f"b{b} {statistics.median(per[b]) * 1e3:.1f}" for b in BATCHES)
        print(f"    UNet fp32 forward, ms per {TILE[0]}^2 tile by batch: {line}")
        out["forward_ms_per_tile"] = {b: statistics.median(per[b]) * 1e3 for b in BATCHES}

        # TiledPredictor's own cost: stacking tiles, launching, blending (network = identity)
        padded, tile, overlap = tiling_for(SHAPE, model, SynthesisOptions())
        x = torch.randn((1, 1, *padded), generator=gen)
        pred = TiledPredictor(lambda s, t: s.clone(), padded, tile, overlap, 4, CPU)
        pred(x, 5)
        overhead = _median_time(lambda: pred(x, 5), 11)
        fwd = out["forward_ms_per_tile"][4] * len(pred.tiles)
        print(
            f"    TiledPredictor overhead per step ({len(pred.tiles)} tiles, batch 4, null net): "
            f"{overhead * 1e3:.2f} ms = {overhead * 1e3 / fwd * 100:.1f}% of the {fwd:.0f} ms of "
            "network time"
        )
        out["tiled_overhead_ms"] = overhead * 1e3

        # experiment: bf16 autocast on CPU (the library enables autocast on CUDA only)
        if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
            x4, t4 = xs[4], ts[4]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                net(x4, t4)
            f32, b16 = [], []
            for _ in range(5):
                f32.append(_median_time(lambda: net(x4, t4), 1))
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    b16.append(_median_time(lambda: net(x4, t4), 1))
                    y16 = net(x4, t4).float()
            y32 = net(x4, t4)
            err = (y16 - y32).abs().max().item() / y32.abs().max().item()
            m32, m16 = statistics.median(f32) / 4 * 1e3, statistics.median(b16) / 4 * 1e3
            print(
                f"    experiment, bf16 autocast on CPU (batch 4): {m16:.1f} vs fp32 {m32:.1f} "
                f"ms/tile ({m32 / m16:.2f}x), max |eps diff| / max |eps| = {err:.3f}"
            )
            out["bf16_ms_per_tile"], out["bf16_rel_err"] = m16, err
        else:
            print("    experiment, bf16 autocast on CPU: not supported by this CPU (skipped)")
    return out


def _unit(model: TrainedModel, image: np.ndarray) -> np.ndarray:
    norm = model.normalization
    return to_unit(image, norm["low"], norm["high"])


def part_quality(random: TrainedModel, sketch: np.ndarray) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if DEMO_CHECKPOINT.is_file():
        model = load_model(DEMO_CHECKPOINT, CPU)
        which = f"trained demo model {DEMO_CHECKPOINT.relative_to(ROOT)} (step {model.step})"
    else:
        model = random
        which = "random network (untrained: compares sampler behaviour only, not realism)"
    y0 = (sketch.shape[0] - QUALITY_SHAPE[0]) // 2
    x0 = (sketch.shape[1] - QUALITY_SHAPE[1]) // 2
    crop = np.ascontiguousarray(sketch[y0 : y0 + QUALITY_SHAPE[0], x0 : x0 + QUALITY_SHAPE[1]])
    t0, k = QUALITY_T_START, QUALITY_STEPS
    padded, tile, overlap = tiling_for(crop.shape, model, SynthesisOptions())
    n_tiles = len(tile_grid(padded, tile, overlap))
    print(
        f"\n[3] quality vs speed: {which}\n    sketch {crop.shape[0]}x{crop.shape[1]} "
        f"(centre crop), tile {tile[0]}^2 x {n_tiles}, batch 4, t_start {t0}, seed 0; "
        "PSNR/SSIM on [0, 1] (model intensity range), data_range=1"
    )

    def run(steps, sampler="ddpm", seed=0):
        opts = SynthesisOptions(t_start=t0, steps=steps, sampler=sampler, batch=4, seed=seed)
        return synthesize_volume(model, crop, opts, seed, CPU)

    run(1)  # warm-up
    start = time.perf_counter()
    full = run(None)
    t_full = time.perf_counter() - start
    results = {}
    header = f"    {'sampler':<28} {'steps':>5} {'s':>7} {'speed-up':>8} {'PSNR dB':>8} {'SSIM':>6}"
    print(header)
    print("    " + "-" * (len(header) - 4))
    print(
        f"    {'ddpm every step (reference)':<28} {t0:>5} {t_full:>7.2f} {1.0:>7.2f}x "
        f"{'-':>8} {'-':>6}"
    )
    ref = _unit(model, full)
    for name, steps, sampler, seed in (
        (f"ddpm --steps {k}", k, "ddpm", 0),
        (f"ddim --steps {k}", k, "ddim", 0),
        (f"ddpm --steps {k}, seed 1", k, "ddpm", 1),
    ):
        outs: list[np.ndarray] = []
        t = _median_time(
            lambda steps=steps, sampler=sampler, seed=seed, outs=outs: outs.append(
                run(steps, sampler, seed)
            ),
            3,
        )
        img = _unit(model, outs[0])
        psnr = peak_signal_noise_ratio(ref, img, data_range=1.0)
        ssim = structural_similarity(ref, img, data_range=1.0)
        results[name] = {"seconds": t, "speedup": t_full / t, "psnr": psnr, "ssim": ssim}
        print(f"    {name:<28} {k:>5} {t:>7.2f} {t_full / t:>7.2f}x {psnr:>8.2f} {ssim:>6.3f}")
    # the stochastic floor: two full runs differing only in the seed are not identical either
    start = time.perf_counter()
    full1 = _unit(model, run(None, "ddpm", 1))
    t_full1 = time.perf_counter() - start
    psnr = peak_signal_noise_ratio(ref, full1, data_range=1.0)
    ssim = structural_similarity(ref, full1, data_range=1.0)
    results["ddpm every step, seed 1"] = {"seconds": t_full1, "psnr": psnr, "ssim": ssim}
    print(
        f"    {'ddpm every step, seed 1':<28} {t0:>5} {t_full1:>7.2f} "
        f"{t_full / t_full1:>7.2f}x {psnr:>8.2f} {ssim:>6.3f}"
    )
    print(
        "    (rows vs the seed-0 every-step output; 'seed 1' rows = the sampler's own "
        "seed-to-seed spread)"
    )
    return {"model": which, "t_start": t0, "full_seconds": t_full, "rows": results}


def main() -> dict:
    threads = set_threads()
    tuned = tune_cpu_allocator()  # as synthesize_dataset does on CPU
    print(
        f"torch {torch.__version__}, {threads} threads, allocator tuned: {tuned}; network: default "
        "2D UNet, random init (seed 0, output conv ~N(0, 0.1)); sketch: hela, seed 0",
        flush=True,
    )
    model = random_model(0)
    sketch = hela_sketch(SHAPE, 0)
    timing = part_timing(model, sketch)
    diag = part_diagnostics(model)
    quality = part_quality(model, sketch)
    return {"timing": timing, "diagnostics": diag, "quality": quality}


if __name__ == "__main__":
    main()
