"""Simulated sketches and masks: presets and their config, shapes, simulators, fit, sketches
from labels."""
