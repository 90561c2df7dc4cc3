"""Metric logs that train, eval and infer share: JSON Lines plus TensorBoard scalars.

`clu`'s metric writers would add a dependency for what is a few lines here;
the JSON Lines file is the record tests and scripts read.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

from prompt_tuning import layout


class MetricsWriter:
  """JSON Lines plus TensorBoard scalars under MODEL_DIR/<name>/."""

  def __init__(self, model_dir: str, name: str):
    self.dir = layout.metrics_dir(model_dir, name)
    self._jsonl = os.path.join(self.dir, "metrics.jsonl")
    self._writer = None  # Made by the first write: a run that stops before it writes nothing.

  def write(self, step: int, scalars: Mapping[str, Any], **extra) -> None:
    if self._writer is None:
      import tensorflow as tf  # TensorBoard event files; TF is only used for data and logs.
      os.makedirs(self.dir, exist_ok=True)
      self._tf = tf
      self._writer = tf.summary.create_file_writer(self.dir)
    record = dict(step=int(step), **{k: jsonable(v) for k, v in scalars.items()}, **extra)
    with open(self._jsonl, "a") as f:
      f.write(json.dumps(record) + "\n")
    with self._writer.as_default(step=int(step)):
      for k, v in scalars.items():
        if isinstance(v, (int, float, np.floating, np.integer)):
          self._tf.summary.scalar(k, float(v))
    self._writer.flush()


def jsonable(v):
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  return v


def jsonable(v: Any) -> Any:
  """numpy scalars as Python numbers (for json.dumps)."""
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  return v
