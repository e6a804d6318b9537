"""Sampling defaults, written once; torch-free so the CLI and the recipe read them at start-up.

Each value is the one a measurement chose (docs/benchmarks.md and docs/experiments.md say which).
"""

# The noise level a sketch is pushed to: the paper's 600 of T = 1000 (the pipeline picks its
# own without labels; `noise-analysis` recommends one for your data).
T_START = 600
# Tiles per network call: pays on a GPU; on a CPU the cost is per voxel.
TILE_BATCH = 4
PRECISION = "auto"  # bf16 where the device computes it natively, else fp32

# Respaced reverse steps from t_start: 50 matched every-step sampling in 2D and 3D (distance
# to the every-step sample within that sampler's own seed-to-seed spread, texture statistics
# kept) at 1/12 of the network calls from t_start 600. Every step stays `--every-step`.
SAMPLE_STEPS = 50
# Fewer default steps where a sampler measured as good with them: dpm++2m-sde at 20 guided
# steps came closest to 50 guided DDPM steps in 3D texture / gradient statistics of every
# cheaper setting (bench_guidance) and its Cellpose scored alike (the 3D experiment).
SAMPLER_STEPS = {"dpm++2m-sde": 20}
AUTO_STEPS = 0  # `steps` when not given: the sampler's default (default_steps)
# `auto`: the sampler by the model's dimensionality. 2D: ddpm (dpm++2m-sde at 20 steps lost
# the texture statistics there); 3D: dpm++2m-sde, 2.7x faster synthesis at the same
# Cellpose scores (docs/experiments.md: the 3D experiment).
AUTO_SAMPLER = {2: "ddpm", 3: "dpm++2m-sde"}
SAMPLER = "auto"
# Classifier-free guidance weight of a conditional model: the 2D study (docs/study_2d.md;
# w = 1 gave AP@0.5 0.52 on real nuclei, w = 2 gave 0.86).
GUIDANCE = 2.0
# Share of the steps, noisiest first, that use guidance (two network calls); the rest take
# the conditional prediction alone (w = 1, one call).
GUIDANCE_SHARE = 1.0


def default_steps(sampler: str) -> int:
    """Reverse steps a sampler takes when none are given."""
    return SAMPLER_STEPS.get(sampler, SAMPLE_STEPS)
