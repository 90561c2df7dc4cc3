"""Serving many prompts from one frozen model: engine, cross-task batcher, HTTP API."""
