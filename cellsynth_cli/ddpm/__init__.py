"""The DDPM stages: train, synthesize, noise analysis (t_start); checkpoints, bundled models,
tiling, patches, pseudo-sketches."""
