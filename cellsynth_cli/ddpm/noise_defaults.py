"""Defaults of the noise analysis (the label-free t_start), written once; torch-free, so the
CLI and the pipeline's recipe read them at start-up."""

from __future__ import annotations

DEFAULT_TIMESTEPS = tuple(range(0, 1001, 100))
# Fixed bin range for every t: x_0 lies in [-1, 1] and x_t = sqrt(ab) x_0 + sqrt(1-ab) eps
# stays within +-5 with overwhelming probability; outliers are clipped into the end bins.
HIST_RANGE = (-5.0, 5.0)
DEFAULT_BINS = 256
# The paper's A. thaliana curve: KLD 0.053 at t=400, 0.004 at t=600; it chose t_start=600.
# 0.01 picks 600 on that curve: the first t where the sketches' noised histogram is
# practically that of the real images.
DEFAULT_KLD_THRESHOLD = 0.01
# QC-aware choice: t whose KLD is at most this are realistic enough to compete on how many
# cells they keep (0.1: t=400 on the paper's A. thaliana curve, 0.053, qualifies).
DEFAULT_QC_MAX_KLD = 0.1
# backward analysis: sampler steps from each t (fast, as synthesize's ddpm default)
DEFAULT_BACKWARD_STEPS = 50

# label-free: sketches simulated from a preset fitted to the images, when none are given
DEFAULT_SIMULATED_SKETCHES = 4
