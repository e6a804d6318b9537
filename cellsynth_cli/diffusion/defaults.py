"""Sampling defaults, written once; torch-free so the CLI and the recipe read them at start-up.

Each value is the one a measurement chose (the README's benchmarks and studies say which).
"""

# Respaced reverse steps from t_start: 50 matched every-step sampling in 2D and 3D (distance
# to the every-step sample within that sampler's own seed-to-seed spread, texture statistics
# kept) at 1/12 of the network calls from t_start 600. Every step stays `--every-step`.
SAMPLE_STEPS = 50
SAMPLER = "ddpm"
# Classifier-free guidance weight of a conditional model: the issue-12 study (w = 1 gave
# AP@0.5 0.52 on real nuclei, w = 2 gave 0.86).
GUIDANCE = 2.0
# Share of the steps, noisiest first, that use guidance (two network calls); the rest take
# the conditional prediction alone (w = 1, one call).
GUIDANCE_SHARE = 1.0
