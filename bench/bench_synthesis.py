"""Synthesis speed: our batched, step-wise blended tile sampler against the naive tile loop.

One network (the default 2D UNet, random-initialised with a fixed seed; the zero-initialised
final convolution is re-drawn so eps is non-trivial) and one sketch (a 2D ``hela`` simulation,
512 x 768, seed 0) for every measurement. Everything runs under ``torch.inference_mode()``
after ``tune_cpu_allocator()``, as ``synthesize`` does on CPU.

1. Sampler timing (respaced DDPM, the same timesteps for every row):
   - ours: ``synthesize_volume`` -> ``sample`` + ``TiledPredictor`` (all tiles of a step
     evaluated in batches, eps blended before the step), tile 256^2, overlap 64, batch 1..12
     in fp32 (batching alone), the same in bf16, and the defaults (auto tile = the whole
     image here, in fp32 and at the default precision: bf16 on CPUs with native bf16);
   - naive, same grid: every tile of our grid sampled alone (batch 1, its own noise, the whole
     reverse loop), finished tiles blended with our weights: isolates batching + blending;
   - naive, reference grid: the public code's way (stegmaierj/DiffusionModelsForImageSynthesis,
     apply_script_diffusion.py + MeristemH5Tiler, settings of notebooks/jupyter_apply_script:
     overlap 20, crop 20 -> tile stride 256 - 20 - 2*20 = 196 from -40, reflect padding,
     distance-transform fading map with the crop zeroed, outputs clipped to [-1, 1]).
   Each row: median of REPEATS interleaved runs; the speed-up is naive-ref / ours.
2. Diagnostics for where the time goes: UNet forward per 256^2 tile at several batch sizes,
   TiledPredictor's own per-step cost (a null network), and bf16 autocast against fp32.
3. Quality vs speed: ``--steps 50`` (and DDIM 50) against every-step DDPM from the same t_start,
   sketch and seed on a 256 x 256 crop; PSNR / SSIM on images mapped to [0, 1] with the
   model's intensity range (skimage.metrics, data_range = 1). Uses the trained demo model
   demo_out/run/checkpoint.pt when it exists, otherwise the random network (then it compares
   sampler behaviour only, not image realism).
4. Are the defaults safe? On the bundled real image (data/dsb2018) and the sketch made from its
   own masks, the demo model synthesizes with tile = training patch in fp32 (the old default)
   and with the whole image as one tile and/or bf16, three seeds each; scores against the real
   image (PSNR / SSIM / MAE, histogram KLD) and same-seed agreement between the variants,
   next to the seed-to-seed spread. Skipped without the demo model.

Run standalone (``python bench/bench_synthesis.py``) or from bench/run.py.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from timing import median_time, set_threads  # noqa: E402

from cellsynth_cli.ddpm.checkpoint import TrainedModel, load_model  # noqa: E402
from cellsynth_cli.ddpm.synthesize import (  # noqa: E402
    SynthesisOptions,
    native_bf16,
    network_in,
    synthesis_plan,
    synthesize_volume,
    tiling_for,
)
from cellsynth_cli.ddpm.tiling import TiledPredictor, blend_weights, tile_grid  # noqa: E402
from cellsynth_cli.diffusion.process import sample  # noqa: E402
from cellsynth_cli.diffusion.schedule import make_schedule  # noqa: E402
from cellsynth_cli.diffusion.unet import UNet, default_config, tune_cpu_allocator  # noqa: E402
from cellsynth_cli.io.intensity import (  # noqa: E402
    from_unit,
    model_to_unit,
    robust_range,
    to_unit,
    unit_to_model,
)
from cellsynth_cli.simulate.config import load_preset, replace  # noqa: E402
from cellsynth_cli.simulate.simulators import get_simulator  # noqa: E402

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
        multiples=net.multiples,
        normalization={"low": 0.0, "high": 1.0},
        config={"patch": list(TILE), "T": 1000, "schedule": "cosine"},
        step=0,
        checksum="random-init",
        path=Path("random-init"),
    )


def hela_sketch(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    cfg = replace(load_preset("hela"), {"shape": shape}, "bench")
    return get_simulator(cfg.simulator)(cfg, np.random.default_rng(seed)).sketch


# ------------------------------------------------------------------------------ samplers
def run_ours(
    model, sketch, batch, t_start, steps, tile=None, seed=0, precision="auto"
) -> np.ndarray:
    opts = SynthesisOptions(
        t_start=t_start, steps=steps, tile=tile, batch=batch, seed=seed, precision=precision
    )
    return synthesize_volume(model, sketch, opts, seed, CPU)


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
    padded, tile, overlap = tiling_for(sketch.shape, model, SynthesisOptions(tile=TILE))
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
    fixed = SynthesisOptions(tile=TILE)
    padded, tile, overlap = tiling_for(sketch.shape, model, fixed)
    n_fixed = len(tile_grid(padded, tile, overlap))
    plan = synthesis_plan(sketch.shape, model, SynthesisOptions(), CPU)
    n_ref = int(np.prod([len(s) for s in reference_grid(sketch.shape)]))
    t0, k = TIMING_T_START, TIMING_STEPS
    configs: list[tuple[str, int, Callable[..., np.ndarray]]] = []
    for b in BATCHES:
        configs.append(
            (
                f"ours tile 256 fp32 b{b}",
                n_fixed,
                lambda ts, st, b=b: run_ours(model, sketch, b, ts, st, TILE, precision="fp32"),
            )
        )
    if native_bf16(CPU):
        configs.append(
            (
                "ours tile 256 bf16 b4",
                n_fixed,
                lambda ts, st: run_ours(model, sketch, 4, ts, st, TILE, precision="bf16"),
            )
        )
    configs.append(
        (
            "ours auto tile, fp32",
            plan["n_tiles"],
            lambda ts, st: run_ours(model, sketch, 4, ts, st, precision="fp32"),
        )
    )
    configs.append(
        (
            f"ours DEFAULTS ({plan['precision']})",
            plan["n_tiles"],
            lambda ts, st: run_ours(model, sketch, 4, ts, st),
        )
    )
    configs.append(
        ("naive, our grid", n_fixed, lambda ts, st: run_naive_same_grid(model, sketch, ts, st))
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
        f"    ours, tile 256: overlap {overlap[0]} -> {n_fixed} tiles; ours, defaults: "
        f"{plan['n_tiles']} tile(s) of {plan['tile']}, {plan['precision']}; reference grid: "
        f"overlap {REF_OVERLAP} + crop {REF_CROP} -> {n_ref} tiles"
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
    best = min((r for r in rows if "fp32 b" in r["sampler"]), key=lambda r: r["seconds"])
    same = statistics.median(times["naive, our grid"])
    default = rows[-3]
    print(
        f"    DEFAULTS vs the reference loop: {default['speedup_vs_ref']:.2f}x (target 3x); "
        f"fp32 only: {rows[-4]['speedup_vs_ref']:.2f}x"
    )
    print(
        f"    batching alone (same 256^2 tiles, fp32): best {best['sampler']} -> "
        f"{same / best['seconds']:.2f}x vs the naive loop on our grid, "
        f"{best['speedup_vs_ref']:.2f}x vs the reference grid"
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
        padded, tile, overlap = tiling_for(SHAPE, model, SynthesisOptions(tile=TILE))
        x = torch.randn((1, 1, *padded), generator=gen)
        pred = TiledPredictor(lambda s, t: s.clone(), padded, tile, overlap, 4, CPU)
        pred(x, 5)
        overhead = median_time(lambda: pred(x, 5), 11)
        fwd = out["forward_ms_per_tile"][4] * len(pred.tiles)
        print(
            f"    TiledPredictor overhead per step ({len(pred.tiles)} tiles, batch 4, null net): "
            f"{overhead * 1e3:.2f} ms = {overhead * 1e3 / fwd * 100:.1f}% of the {fwd:.0f} ms of "
            "network time"
        )
        out["tiled_overhead_ms"] = overhead * 1e3

        # bf16 (the default where the CPU computes bf16 natively): synthesize's bf16 copy
        if native_bf16(CPU):
            x4, t4 = xs[4], ts[4]
            half = network_in(net, "bf16")
            half(x4, t4)
            f32, b16 = [], []
            for _ in range(5):
                f32.append(median_time(lambda: net(x4, t4), 1))
                b16.append(median_time(lambda: half(x4, t4), 1))
            y16, y32 = half(x4, t4), net(x4, t4)
            err = (y16 - y32).abs().max().item() / y32.abs().max().item()
            m32, m16 = statistics.median(f32) / 4 * 1e3, statistics.median(b16) / 4 * 1e3
            print(
                f"    bf16 on CPU (batch 4): {m16:.1f} vs fp32 {m32:.1f} "
                f"ms/tile ({m32 / m16:.2f}x), max |eps diff| / max |eps| = {err:.3f}"
            )
            out["bf16_ms_per_tile"], out["bf16_rel_err"] = m16, err
        else:
            print("    bf16 on CPU: no native bf16 on this CPU (skipped)")
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
        t = median_time(
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


def part_defaults_quality() -> dict:
    import tifffile

    from cellsynth_cli.measure.evaluate import score_pair
    from cellsynth_cli.measure.metrics import histogram, kl_divergence, psnr, ssim
    from cellsynth_cli.simulate.sketch_from_labels import sketch_from_labels

    if not DEMO_CHECKPOINT.is_file():
        print("\n[4] defaults quality: skipped (run `make demo` first for a trained model)")
        return {}
    model = load_model(DEMO_CHECKPOINT, CPU)
    data = ROOT / "data" / "dsb2018"
    real = tifffile.imread(data / "dsb2018.tif").astype(np.float32)
    masks = tifffile.imread(data / "dsb2018_masks.tif")
    norm = model.normalization
    sketch, _ = sketch_from_labels(real, masks, norm["low"], norm["high"])
    lo, hi = robust_range([real])
    real_hist = histogram(to_unit(real, lo, hi), 64, (0.0, 1.0))  # 64: the real image is 8-bit
    patch = tuple(model.config["patch"])
    variants = {
        f"tile {patch[0]} fp32 (old)": (patch, "fp32"),
        "whole image fp32": (None, "fp32"),
        f"tile {patch[0]} bf16": (patch, "bf16"),
        "whole image bf16": (None, "bf16"),
    }
    if not native_bf16(CPU):
        variants = {k: v for k, v in variants.items() if v[1] == "fp32"}
    seeds = (0, 1, 2)
    print(
        f"\n[4] defaults quality: demo model (patch {patch[0]}^2) on data/dsb2018 "
        f"{real.shape[0]}x{real.shape[1]}, sketch from its masks, t_start 500, 50 steps, "
        f"seeds {seeds}; vs the real image (reference-percentile scale), mean over seeds"
    )
    outputs: dict[tuple[str, int], np.ndarray] = {}
    rows = {}
    header = f"    {'variant':<22} {'PSNR dB':>8} {'SSIM':>6} {'MAE':>7} {'KLD':>7} {'s':>6}"
    print(header)
    print("    " + "-" * (len(header) - 4))
    for name, (tile, precision) in variants.items():
        scores = []
        for seed in seeds:
            opts = SynthesisOptions(
                t_start=500, steps=50, tile=tile, seed=seed, precision=precision
            )
            start = time.perf_counter()
            image = synthesize_volume(model, sketch, opts, seed, CPU)
            took = time.perf_counter() - start
            s = score_pair(image, real)
            unit = to_unit(image, lo, hi)
            s["kld"] = kl_divergence(histogram(unit, 64, (0.0, 1.0)), real_hist)
            s["seconds"] = took
            scores.append(s)
            outputs[(name, seed)] = unit
        mean = {k: float(np.mean([x[k] for x in scores])) for k in scores[0]}
        rows[name] = mean
        print(
            f"    {name:<22} {mean['psnr']:>8.2f} {mean['ssim']:>6.3f} {mean['mae']:>7.4f} "
            f"{mean['kld']:>7.4f} {mean['seconds']:>6.2f}"
        )
    base = next(iter(variants))
    print(f"    agreement with '{base}' at the same seed (PSNR dB / SSIM, mean over seeds):")
    agreement = {}
    for name in variants:
        pairs = (
            [((base, s), (base, (s + 1) % len(seeds))) for s in seeds]
            if name == base
            else [((base, s), (name, s)) for s in seeds]
        )
        p = float(np.mean([psnr(outputs[b], outputs[a], 1.0) for a, b in pairs]))
        q = float(np.mean([ssim(outputs[b], outputs[a], 1.0) for a, b in pairs]))
        label = f"{name} (other seed: the spread)" if name == base else name
        agreement[label] = {"psnr": p, "ssim": q}
        print(f"      {label:<40} {p:>6.2f} / {q:.3f}")
    return {"rows": rows, "agreement": agreement}


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
    defaults = part_defaults_quality()
    return {"timing": timing, "diagnostics": diag, "quality": quality, "defaults": defaults}


if __name__ == "__main__":
    main()
