"""GPU throughput (CUDA only): UNet forward TFLOP/s against a bf16 GEMM of the same run, and
seconds per full-size C. elegans volume.

1. A bf16 torch.mm of 8192 x 8192 (the GPU's practical tensor-core ceiling in this run).
2. Our UNet forward, default 2D (256 x 256 tiles) and 3D (32 x 128 x 128 tiles) configs, batch
   1, 2, 4, 8, 16, fp32 and bf16 autocast: ms per forward (median of CUDA-synchronised runs
   after warm-up), TFLOP/s from torch.utils.flop_counter, and the ratio to the bf16 GEMM.
3. `synthesize_volume` on a full-size simulated C. elegans sketch (35 x 512 x 708) with the
   anisotropic 3D UNet (random weights: speed does not depend on training), auto tiles,
   --precision auto, 50 respaced DDPM steps: seconds per volume and peak GPU memory.

On a machine without CUDA it says so and measures nothing (never a made-up GPU number).
Run: python bench/bench_gpu.py  (or `make bench-gpu`).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).parent))

from cellsynth_cli.diffusion.unet import UNet, default_config  # noqa: E402

TILES = {2: (256, 256), 3: (32, 128, 128)}
BATCHES = (1, 2, 4, 8, 16)
VOLUME_STEPS = 50


def cuda_time(fn, runs: int = 7, warmup: int = 3) -> float:
    """Median seconds of fn() with the GPU synchronised around each call."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_tflops(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    return 2 * n**3 / cuda_time(lambda: torch.mm(a, b)) / 1e12


def unet_rows(ceiling: float) -> None:
    print(
        f"{'UNet':8s} {'batch':>5s} {'precision':>9s} {'GFLOP':>8s} {'ms':>8s} {'TFLOP/s':>8s} "
        f"{'of GEMM':>8s}"
    )
    for dims, tile in TILES.items():
        torch.manual_seed(0)
        net = UNet(default_config(dims, None)).cuda().eval()
        for batch in BATCHES:
            x = torch.randn(batch, 1, *tile, device="cuda")
            t = torch.randint(1, 1000, (batch,), device="cuda")
            with torch.inference_mode(), FlopCounterMode(display=False) as counter:
                net(x, t)
            flops = counter.get_total_flops()
            for precision in ("fp32", "bf16"):
                autocast = torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16")
                try:
                    with torch.inference_mode(), autocast:
                        seconds = cuda_time(lambda net=net, x=x, t=t: net(x, t))
                except torch.cuda.OutOfMemoryError:
                    print(f"{dims}D {batch:13d} {precision:>9s} out of GPU memory")
                    torch.cuda.empty_cache()
                    continue
                tflops = flops / seconds / 1e12
                print(
                    f"{dims}D {batch:11d} {precision:>9s} {flops / 1e9:8.1f} "
                    f"{seconds * 1e3:8.2f} {tflops:8.1f} {tflops / ceiling:8.2f}",
                    flush=True,
                )
        del net
        torch.cuda.empty_cache()


def celegans_volume() -> None:
    from bench_synthesis_3d import _model, _sketch

    from cellsynth_cli.ddpm import synthesize as synth

    sketch, voxel = _sketch("celegans")
    model = _model(True, voxel)
    device = torch.device("cuda")
    model.net.to(device)
    options = synth.SynthesisOptions(t_start=600, steps=VOLUME_STEPS, sampler="ddpm")
    plan = synth.synthesis_plan(sketch.shape, model, options, device)
    torch.cuda.reset_peak_memory_stats()
    synth.synthesize_volume(model, sketch, options, 0, device)  # warm-up (cuDNN autotuning)
    torch.cuda.synchronize()
    start = time.perf_counter()
    synth.synthesize_volume(model, sketch, options, 0, device)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(
        f"\nfull-size C. elegans {'x'.join(map(str, sketch.shape))}: {plan['n_tiles']} tile(s) of "
        f"{'x'.join(map(str, plan['tile']))}, {plan['precision']}, {VOLUME_STEPS} steps: "
        f"{seconds:.1f} s per volume, peak GPU memory "
        f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
    )


def main() -> None:
    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured")
        return
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name()
    ceiling = gemm_tflops()
    print(f"{name}, torch {torch.__version__}; bf16 GEMM 8192^3: {ceiling:.0f} TFLOP/s\n")
    unet_rows(ceiling)
    celegans_volume()


if __name__ == "__main__":
    main()
