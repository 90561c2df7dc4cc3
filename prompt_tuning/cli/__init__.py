"""Command-line entry points and their start-up environment."""
