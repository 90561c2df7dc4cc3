"""Checkpoints of what changes: trainable parameters, their optimizer state, the
step and the data position, saved with Orbax (atomic: a step folder appears
only once complete). The frozen backbone is never saved; it is re-read from
INITIAL_CHECKPOINT_PATH. Every save also exports each prompt as
`MODEL_DIR/prompts/step_N/<param path with '.' for '/'>.npy`.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning import trees as tree_lib
from prompt_tuning.prompts import base as prompt_base
from prompt_tuning.runtime import faults
from prompt_tuning import layout

class CheckpointStore:
  """MODEL_DIR/checkpoints/<step>/{trainable, opt_state, meta}, managed by Orbax."""

  def __init__(self, model_dir: str, max_to_keep: Optional[int] = None):
    self.model_dir = model_dir
    self.directory = layout.checkpoints_dir(model_dir)
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                             create=True))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, trainable: Any, opt_state: Any, data_position: int,
           extra: Optional[dict] = None) -> None:
    """Saves (blocking until committed) unless this step is already saved."""
    if step in self._manager.all_steps():
      return
    meta = dict(step=int(step), data_position=int(data_position), **(extra or {}))
    self._manager.save(step, args=ocp.args.Composite(
        trainable=ocp.args.StandardSave(trainable),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta)))
    faults.maybe_kill("during_save", step)  # The write is under way, not committed.
    self._manager.wait_until_finished()

  def restore(self, abstract_trainable: Any, abstract_opt_state: Any,
              step: Optional[int] = None) -> Optional[tuple[Any, Any, dict]]:
    """(trainable, opt_state, meta) of `step` (default: latest), or None if none saved."""
    step = self.latest_step() if step is None else step
    if step is None:
      return None
    if step not in self._manager.all_steps():
      raise FileNotFoundError(f"No checkpoint for step {step} in {self.directory}; "
                              f"saved steps: {self.all_steps()}")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        trainable=ocp.args.StandardRestore(abstract_trainable),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        meta=ocp.args.JsonRestore()))
    return restored.trainable, restored.opt_state, dict(restored.meta)

  def restore_trainable(self, abstract_trainable: Any, step: Optional[int] = None) -> Any:
    """Only the trainable parameters (for eval and infer)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory} to evaluate")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        trainable=ocp.args.StandardRestore(abstract_trainable)))
    return restored.trainable

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def close(self) -> None:
    self._manager.close()


def directory_bytes(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


def export_prompts(model_dir: str, step: int, trainable: Any) -> list[str]:
  """Writes every prompt leaf as .npy; refuses to replace a different existing file."""
  flat = {k: np.asarray(jax.device_get(v)) for k, v in tree_lib.flatten(trainable).items()
          if prompt_base.PROMPT_PARAM.fullmatch(k)}
  out_dir = layout.prompts_dir(model_dir, step)
  os.makedirs(out_dir, exist_ok=True)
  written = []
  for name, value in sorted(flat.items()):
    path = layout.prompt_file(model_dir, step, name)
    if os.path.exists(path):
      existing = np.load(path, allow_pickle=False)
      if existing.shape == value.shape and existing.tobytes() == value.tobytes():
        written.append(path)
        continue
      raise FileExistsError(f"Refusing to overwrite {path}: it holds a different prompt "
                            "(another run's output?); use a new MODEL_DIR")
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as f:
      np.save(f, value, allow_pickle=False)
    os.replace(tmp, path)
    written.append(path)
  return written
