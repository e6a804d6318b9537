"""cellsynth: fully-annotated synthetic microscopy data with denoising diffusion models."""

__version__ = "0.1.0"
