"""The scoring defaults the CLI reads at start-up (numpy-free)."""

# paired realism scores: both images mapped to [0, 1] by the reference's percentiles, or raw
SCALES = ("ref-percentiles", "none")
SCALE = SCALES[0]
