"""Metric functions with seqio's signature: metric_fn(targets, predictions) -> {name: value}."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Percentage of predictions equal to their target string."""
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")
  return {"exact_match": 100.0 * float(np.mean([t == p for t, p in zip(targets, predictions)]))}
