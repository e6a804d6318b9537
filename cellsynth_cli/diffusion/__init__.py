"""The diffusion model: schedule, network, forward and reverse process."""
