"""The defaults every stage shares: the random seed and the device. A stage's own defaults
live in its config module (ddpm/config.py, ddpm/noise_defaults.py, segment/config.py,
diffusion/defaults.py, simulate/config.py). Torch-free: the CLI reads it at start-up."""

# the same seed gives the same output on the same device
SEED = 0
# CUDA when available, else CPU (runtime/device.py)
DEVICE = "auto"
