"""Fewer network calls for a guided conditional model, at the quality of 50 guided DDPM steps?

Guidance costs two network calls per step (conditional + unconditional). The levers measured
here: guiding only the noisiest share of the steps (`--guidance-share`; the rest take the
conditional prediction alone, one call) and fewer steps (the stochastic second-order
dpm++2m-sde sampler). Each setting synthesizes the same sketches with the same seeds and is
compared with the reference, 50 guided DDPM steps (100 calls):

- PSNR / SSIM to the reference of the same seed (on [0, 1]); the reference's own seed-to-seed
  distance is the yardstick (a sampler closer than that is as good as another seed);
- texture (local std) and gradient-magnitude histogram KLD against the pooled reference;
- phantom / vanished: the classical segmenter on each synthetic image against its own
  simulated masks (what guidance is for: the image keeps the sketch's nuclei).

Network-call counts, not seconds, are reported: seconds per call are bench_synthesis_3d's.

Data: BENCH_GUIDANCE_PROJECT, a `cellsynth pipeline` project with a conditional DDPM
(runs/ddpm), sketches (sim/) and t_start.json, e.g. experiment_3d_out/pipeline after
`make experiment-3d` (3D sketches are cut to a centre crop of BENCH_GUIDANCE_CROP, default
32,128,128). Without it: the bundled conditional 2D model, t_start 1000, and 4 sketches
simulated from `simulate fit` of the bundled image's left half (256 x 256).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

REFERENCE = ("ddpm", 50, 1.0)
SETTINGS = [
    ("ddpm", 50, 0.5),
    ("ddpm", 50, 0.25),
    ("ddpm", 50, 0.1),
    ("ddpm", 50, 0.0),
    ("ddpm", 25, 0.1),
    ("dpm++2m-sde", 20, 1.0),
    ("dpm++2m-sde", 20, 0.25),
    ("dpm++2m-sde", 20, 0.1),
    ("dpm++2m-sde", 20, 0.0),
]
SEEDS = (0, 1)
BINS = 128


def calls(steps: int, share: float) -> int:
    return steps + math.ceil(share * steps)


def bundled_2d(folder: Path) -> tuple[Path, list, int]:
    """The bundled conditional model and 4 sketches fitted to the bundled left half."""
    import tifffile

    from cellsynth_cli import io
    from cellsynth_cli.ddpm import bundled
    from cellsynth_cli.simulate.config import load_preset, replace
    from cellsynth_cli.simulate.dataset import simulate_dataset
    from cellsynth_cli.simulate.fit import fit_nuclei, to_toml

    real = folder / "real"
    real.mkdir()
    image = tifffile.imread(ROOT / "data" / "dsb2018" / "dsb2018.tif")[:, :256]
    tifffile.imwrite(real / "dsb.tif", image)
    preset = folder / "fit.toml"
    preset.write_text(to_toml(fit_nuclei(real), real))
    config = replace(load_preset(str(preset)), {"touching_fraction": 0.25}, source="bench")
    simulate_dataset(config, 4, folder / "sim", seed=0)
    sketches = [io.read_volume(p) for p in io.list_volumes(folder / "sim")]
    return bundled.resolve("bundled:dsb2018-nuclei-conditional"), sketches, 1000


def project_data(project: Path) -> tuple[Path, list, int]:
    import json

    from cellsynth_cli import io

    crop = [int(v) for v in os.environ.get("BENCH_GUIDANCE_CROP", "32,128,128").split(",")]
    sketches = []
    for path in io.list_volumes(project / "sim"):
        volume = io.read_volume(path)
        if volume.sketch.ndim == 3:
            start = [max(0, (n - c) // 2) for n, c in zip(volume.sketch.shape, crop, strict=True)]
            cut = tuple(slice(a, a + c) for a, c in zip(start, crop, strict=True))
            volume = io.Volume(
                volume.name,
                sketch=volume.sketch[cut],
                masks=volume.masks[cut],
                voxel_size=volume.voxel_size,
            )
        sketches.append(volume)
    t_start = json.loads((project / "t_start.json").read_text())["t_start"]
    return project / "runs" / "ddpm", sketches, t_start


def main() -> None:
    import torch
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    from timing import set_threads

    from cellsynth_cli.ddpm.checkpoint import load_model
    from cellsynth_cli.ddpm.synthesize import SynthesisOptions, synthesize_volume
    from cellsynth_cli.diffusion.unet import tune_cpu_allocator
    from cellsynth_cli.measure.metrics import histogram, kl_divergence
    from cellsynth_cli.measure.qc import phantom_vanished
    from cellsynth_cli.measure.realism import feature_maps

    set_threads()
    tune_cpu_allocator()
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        project = os.environ.get("BENCH_GUIDANCE_PROJECT")
        run, volumes, t_start = project_data(Path(project)) if project else bundled_2d(Path(tmp))
        model = load_model(run, device)
    lo, hi = model.normalization["low"], model.normalization["high"]

    def synth(setting: tuple, seed: int) -> list[np.ndarray]:
        sampler, steps, share = setting
        options = SynthesisOptions(
            t_start=t_start, steps=steps, sampler=sampler, guidance=2.0, guidance_share=share
        )
        return [
            np.clip(
                (
                    synthesize_volume(
                        model, v.sketch, options, seed + 10 * k, device, condition=v.sketch
                    )
                    - lo
                )
                / (hi - lo),
                0,
                1,
            )
            for k, v in enumerate(volumes)
        ]

    reference = {seed: synth(REFERENCE, seed) for seed in SEEDS}
    ref_features = [feature_maps(im) for seed in SEEDS for im in reference[seed]]
    ranges = {
        n: (0.0, 1.5 * float(np.percentile(ref_features[0][n], 99.5)))
        for n in ("texture", "gradient")
    }

    def pooled(features: list[dict], name: str) -> np.ndarray:
        return sum(histogram(f[name], BINS, ranges[name]) for f in features)

    ref_hist = {n: pooled(ref_features, n) for n in ranges}

    def scores(images: dict[int, list[np.ndarray]], against: dict) -> dict:
        pairs = [(a, b) for s in SEEDS for a, b in zip(images[s], against[s], strict=True)]
        feats = [feature_maps(im) for s in SEEDS for im in images[s]]
        qc = [
            phantom_vanished(im, v.masks, v.voxel_size)
            for s in SEEDS
            for im, v in zip(images[s], volumes, strict=True)
        ]
        return {
            "psnr": np.mean([peak_signal_noise_ratio(b, a, data_range=1.0) for a, b in pairs]),
            "ssim": np.mean([structural_similarity(b, a, data_range=1.0) for a, b in pairs]),
            **{f"{n}_kld": kl_divergence(ref_hist[n], pooled(feats, n)) for n in ranges},
            "phantom": np.mean([q["phantom"] for q in qc]),
            "vanished": np.mean([q["vanished"] for q in qc]),
        }

    shape = "x".join(map(str, volumes[0].sketch.shape))
    print(
        f"guidance levers: {run} (step {model.step}), t_start {t_start}, {len(volumes)} "
        f"sketches of {shape} x seeds {SEEDS}, guidance 2; against {REFERENCE[1]} guided "
        f"{REFERENCE[0]} steps of the same seed"
    )
    print(
        f"{'sampler':12s} {'steps':>5s} {'share':>5s} {'calls':>5s} {'PSNR':>6s} {'SSIM':>6s} "
        f"{'tex KLD':>8s} {'grad KLD':>8s} {'phantom':>7s} {'vanished':>8s}",
        flush=True,
    )

    def row(label: tuple, calls_: int, s: dict) -> None:
        print(
            f"{label[0]:12s} {label[1]:5d} {label[2]:5.2f} {calls_:5d} {s['psnr']:6.2f} "
            f"{s['ssim']:6.3f} {s['texture_kld']:8.4f} {s['gradient_kld']:8.4f} "
            f"{s['phantom']:7.1%} {s['vanished']:8.1%}",
            flush=True,
        )

    swapped = {SEEDS[0]: reference[SEEDS[1]], SEEDS[1]: reference[SEEDS[0]]}
    yard = scores(reference, swapped)  # the reference against its other seed
    by_seed = [[feature_maps(im) for im in reference[s]] for s in SEEDS]
    for n in ranges:  # texture / gradient: one seed's histogram against the other's
        yard[f"{n}_kld"] = kl_divergence(pooled(by_seed[0], n), pooled(by_seed[1], n))
    print("reference against its own other seed (the yardstick):")
    row(REFERENCE, calls(REFERENCE[1], REFERENCE[2]), yard)
    for setting in SETTINGS:
        row(
            setting,
            calls(setting[1], setting[2]),
            scores({s: synth(setting, s) for s in SEEDS}, reference),
        )


if __name__ == "__main__":
    main()
