"""Prompt recycling (Lester et al. 2022): moving prompts between frozen models."""
