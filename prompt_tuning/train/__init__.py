"""Training: freezing, optimizers, the step, checkpoints, data and the loops."""
