"""Training: optimizers, the step and the loop (freezing, checkpoints and data are runtime's)."""
