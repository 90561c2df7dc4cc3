"""Prompt modules that plug into the T5 prompt seam, and their initializers."""
