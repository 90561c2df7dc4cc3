"""MODEL_DIR/best/: the prompts of the best evaluation during training, read back.

`train` writes the folder (train/best.py); `eval` and `infer` read it with
CHECKPOINT_STEP='best': the trainable parameters come from its exported
prompt files, so no checkpoint of that step needs to be kept.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

from prompt_tuning import layout
from prompt_tuning import trees as tree_lib

BEST = "best"
BEST_JSON = "best.json"


def best_dir(model_dir: str) -> str:
  return os.path.join(model_dir, BEST)


def read(model_dir: str) -> Optional[dict[str, Any]]:
  """MODEL_DIR/best/best.json (step, metric, value, mode), or None."""
  path = os.path.join(best_dir(model_dir), BEST_JSON)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _file(model_dir: str, path: str) -> str:
  # The exported files' names, as under prompts/step_<N>/.
  return os.path.join(best_dir(model_dir), os.path.basename(layout.prompt_file("", 0, path)))


def check(model_dir: str, abstract_trainable: Any) -> None:
  """A best/ folder exists and holds a file of the right shape for every trainable leaf."""
  if read(model_dir) is None:
    raise FileNotFoundError(f"CHECKPOINT_STEP='best' but {best_dir(model_dir)} holds no "
                            f"{BEST_JSON}; train with EVAL_PERIOD set to keep the best prompt")
  for path, leaf in tree_lib.flatten(abstract_trainable).items():
    file = _file(model_dir, path)
    if not os.path.exists(file):
      raise FileNotFoundError(f"CHECKPOINT_STEP='best': {file} is missing; the best folder "
                              f"holds only exported prompts, and {path} is trainable here")
    shape = np.load(file, mmap_mode="r", allow_pickle=False).shape
    if tuple(shape) != tuple(leaf.shape):
      raise ValueError(f"CHECKPOINT_STEP='best': {file} has shape {tuple(shape)}; this model's "
                       f"{path} has shape {tuple(leaf.shape)}")


def load_trainable(model_dir: str, abstract_trainable: Any) -> tuple[Any, int]:
  """(trainable parameters from best/'s prompt files, the best step)."""
  check(model_dir, abstract_trainable)
  flat = {path: np.load(_file(model_dir, path), allow_pickle=False).astype(leaf.dtype)
          for path, leaf in tree_lib.flatten(abstract_trainable).items()}
  return tree_lib.unflatten(flat), int(read(model_dir)["step"])
