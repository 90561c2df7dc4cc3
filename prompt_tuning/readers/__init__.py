"""Checkpoint readers: T5X (msgpack + zarr, inline msgpack, Orbax) and Hugging Face.

`load_params(path, model)` fills a model's parameter tree by name from either
format and fails with one error listing every missing, unexpected or
wrong-shaped array. `read_array(path, name)` reads one array only;
`config_for(path)` gives the T5Config. Opened checkpoints (their metadata) are
cached per path, and `ARRAY_READS` counts every array read, by (folder, name).
"""

from __future__ import annotations

import collections
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import numpy as np

from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5Config
from prompt_tuning import trees as tree_lib
from prompt_tuning.readers import hf, t5x
from prompt_tuning.readers.config import config_from_shapes
from prompt_tuning.trees import CheckpointMismatchError  # noqa: F401  (re-export)

# (checkpoint folder, parameter name) -> times read in this process.
ARRAY_READS: collections.Counter = collections.Counter()
_OPENED: dict[tuple[str, float], Any] = {}


def is_hf_folder(path: str) -> bool:
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def open_checkpoint(path: str):
  """A T5XCheckpoint or HFCheckpoint, by what the folder holds (cached per path and mtime)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Checkpoint not found: {path} (expected a T5X checkpoint_N folder "
                            "or a Hugging Face folder with config.json)")
  key = (os.path.abspath(path), _newest_mtime(path))
  if key not in _OPENED:
    ckpt = hf.HFCheckpoint(path) if is_hf_folder(path) else t5x.T5XCheckpoint(path)
    _OPENED.clear()  # One at a time: an inline msgpack checkpoint holds its arrays.
    _OPENED[key] = ckpt
  return _OPENED[key]


def _newest_mtime(path: str) -> float:
  """A folder's own mtime misses files rewritten in place: take its entries' too."""
  if not os.path.isdir(path):
    return os.path.getmtime(path)
  return max([os.path.getmtime(path)] + [e.stat().st_mtime for e in os.scandir(path)])


def _read(ckpt: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
  source = getattr(ckpt, "dir", "")
  ARRAY_READS.update((source, n) for n in names)
  return ckpt.read_many(list(names))


def read_array(path: str, name: str) -> np.ndarray:
  """One parameter (e.g. 'token_embedder/embedding') of either format, nothing else."""
  return _read(open_checkpoint(path), [name])[name]


def load_params(path: str, model: nn.Module, allow_missing: Sequence[str] = (),
                dtype: Optional[Any] = None) -> dict[str, Any]:
  """Reads a checkpoint into `model`'s parameter tree (nested dict of numpy arrays).

  Args:
    path: T5X checkpoint (folder or file) or Hugging Face folder.
    model: the T5 module; its abstract parameters say what must be read.
    allow_missing: '/'-joined names (regexes are not accepted here) that the
      checkpoint may lack, such as prompt parameters; they are left out of the
      result for the caller to initialize.
    dtype: cast every array to this dtype (defaults to the model's
      `weight_dtype`).
  """
  cfg: T5Config = model.config
  shapes, _ = params_lib.abstract_params(model)
  expected = tree_lib.flatten(shapes)
  # Checkpoints name layers one by one; a scanned model stacks them after reading.
  expected_unrolled = params_lib.unstack_layers(expected) if cfg.scan_layers else expected
  ckpt = open_checkpoint(path)
  present = {k: tree_lib.ShapeOnly(s) for k, s in ckpt.shapes().items()}
  tree_lib.check_against(present, expected_unrolled, getattr(ckpt, "dir", path),
                         tuple(allow_missing))
  flat = _read(ckpt, [k for k in expected_unrolled if k in present])
  if cfg.scan_layers:
    flat = params_lib.stack_layers(flat, {"encoder": cfg.num_encoder_layers,
                                          "decoder": cfg.num_decoder_layers})
  target_dtype = np.dtype(dtype) if dtype is not None else cfg.param_dtype
  flat = {k: np.asarray(v).astype(target_dtype) for k, v in flat.items()}
  return tree_lib.unflatten(flat)


def config_for(path: str, relative_attention_max_distance: Optional[int] = None,
               **overrides) -> T5Config:
  """The T5Config of a checkpoint: config.json (HF) or the parameter shapes (T5X).

  Reads metadata only, never an array. `relative_attention_max_distance` is
  not stored in T5X checkpoints (default 128); given, it overrides either
  format's value.
  """
  if relative_attention_max_distance:
    overrides["relative_attention_max_distance"] = relative_attention_max_distance
  ckpt = open_checkpoint(path)
  if hasattr(ckpt, "config"):
    return ckpt.config.replace(**overrides) if overrides else ckpt.config
  return config_from_shapes(ckpt.shapes(), **overrides)
