"""The best prompt by a validation metric, and early stopping on it.

After each evaluation during training (train/evaluator.py) the keeper
compares the inference metric `CheckpointSpec.best_metric` (default: the
task's first metric) with the best so far. An improvement of more than
`EvalSpec.min_delta` exports the trainable prompts to MODEL_DIR/best/, with
best.json naming the step, the metric and its value; no full checkpoint is
kept for it. With `EvalSpec.early_stopping_patience = P`, P evaluations in a
row without such an improvement stop the run.

MODEL_DIR/best is a symbolic link to a complete folder `best_at_<N>`,
written first and then swapped in with one rename, so a reader (or a kill)
never sees half of a best prompt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional

from prompt_tuning import layout
from prompt_tuning.runtime import best_prompts
from prompt_tuning.runtime import checkpoints as checkpoints_lib
from prompt_tuning.runtime import faults

log = logging.getLogger(__name__)

BEST, BEST_JSON = best_prompts.BEST, best_prompts.BEST_JSON
read = best_prompts.read
MODES = ("max", "min")
_STAGING = ".best_staging_"
_VERSION = "best_at_"  # best_at_<N>/: one complete best, which MODEL_DIR/best links to


class BestKeeper:
  """Tracks the best evaluation, exports its prompts, counts evaluations without improvement."""

  def __init__(self, model_dir: str, metric: str, mode: str = "max", min_delta: float = 0.0,
               patience: Optional[int] = None, is_chief: bool = True,
               exported: Optional[Mapping[str, Any]] = None):
    self.model_dir, self.metric, self.mode = model_dir, metric, mode
    self.min_delta, self.patience, self.is_chief = float(min_delta), patience, is_chief
    self.exported = dict(exported or {})
    self.best_step: Optional[int] = None
    self.best_value: Optional[float] = None
    self.evals_without_improvement = 0
    self.stopped: Optional[dict[str, Any]] = None

  def state(self) -> dict[str, Any]:
    """What a checkpoint keeps, so that a resumed run decides as an uninterrupted one."""
    return dict(metric=self.metric, step=self.best_step, value=self.best_value,
                evals_without_improvement=self.evals_without_improvement,
                stopped=self.stopped)

  def restore(self, state: Optional[Mapping[str, Any]]) -> None:
    """The state saved with the checkpoint resumed from (not best/, which may be newer)."""
    if not state or state.get("metric") != self.metric:
      return
    self.best_step = None if state.get("step") is None else int(state["step"])
    self.best_value = None if state.get("value") is None else float(state["value"])
    self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
    self.stopped = state.get("stopped")

  def improves(self, value: float) -> bool:
    if self.best_value is None:
      return True
    if self.mode == "max":
      return value > self.best_value + self.min_delta
    return value < self.best_value - self.min_delta

  def update(self, step: int, metrics: Mapping[str, float], trainable: Any) -> Optional[str]:
    """Records one evaluation; returns why the run should stop, or None."""
    value = float(metrics[self.metric])
    if self.improves(value):
      self.best_step, self.best_value = step, value
      self.evals_without_improvement = 0
      if self.is_chief:
        export(self.model_dir, step, trainable, self.metric, value, self.mode, self.exported)
      log.info("New best %s = %g at step %d (%s)", self.metric, value, step,
               os.path.join(self.model_dir, BEST))
      return None
    self.evals_without_improvement += 1
    if self.patience and self.evals_without_improvement >= self.patience:
      reason = (f"early stopping at step {step}: {self.metric} did not improve by more than "
                f"{self.min_delta:g} in {self.patience} evaluations; the best is "
                f"{self.best_value:g} at step {self.best_step}")
      log.warning(reason[0].upper() + reason[1:])
      self.stopped = dict(step=step, reason=reason)
      return reason
    return None

  def summary(self) -> Optional[dict[str, Any]]:
    if self.best_step is None:
      return None
    return dict(step=self.best_step, metric=self.metric, value=self.best_value,
                mode=self.mode, path=os.path.join(self.model_dir, BEST))


def export(model_dir: str, step: int, trainable: Any, metric: str, value: float, mode: str,
           exported: Mapping[str, Any]) -> str:
  """Writes best_at_<step>/ in full, then points MODEL_DIR/best at it with one rename."""
  target = os.path.join(model_dir, f"{_VERSION}{step}")
  for name in os.listdir(model_dir):  # Left by a run killed while it exported.
    if name.startswith(_STAGING):
      shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
  staging = tempfile.mkdtemp(dir=model_dir, prefix=_STAGING)
  try:
    # export_prompts writes its usual folder under the staging root, with provenance.
    checkpoints_lib.export_prompts(staging, step, trainable, **exported)
    folder = layout.prompts_dir(staging, step)
    with open(os.path.join(folder, BEST_JSON), "w") as f:
      json.dump(dict(step=step, metric=metric, value=value, mode=mode), f, indent=1)
    if os.path.exists(target):  # Left by a run killed before its link moved.
      shutil.rmtree(target)
    os.replace(folder, target)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  faults.maybe_kill("during_best_export", step)
  link = os.path.join(model_dir, BEST)
  tmp_link = link + ".new"
  if os.path.lexists(tmp_link):
    os.remove(tmp_link)
  os.symlink(os.path.basename(target), tmp_link)
  os.replace(tmp_link, link)
  for name in os.listdir(model_dir):  # Earlier bests: nothing points at them now.
    if name.startswith(_VERSION) and name != os.path.basename(target):
      shutil.rmtree(os.path.join(model_dir, name), ignore_errors=True)
  return target
