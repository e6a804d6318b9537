"""cellsynth: fully-annotated synthetic microscopy data with denoising diffusion models."""

# the one place the version is written (pyproject reads it). A change to what a stage makes
# raises it: `cellsynth pipeline` then tells which kept stages an older version made.
__version__ = "0.3.0"
