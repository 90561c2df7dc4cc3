"""What train, eval and infer share: specs, freezing, data, mesh and partitioning,
two-phase setup, checkpoints and metric writers.

This package sits below `train/` and `evaluation`: it imports neither.
"""
