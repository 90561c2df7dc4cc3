"""Checkpoint readers: T5X (msgpack + zarr, inline msgpack, Orbax) and Hugging Face.

`load_params(path, model)` fills a model's parameter tree by name from either
format and fails with one error listing every missing, unexpected or
wrong-shaped array. `read_array(path, name)` reads one array only;
`config_for(path)` gives the T5Config. Opened checkpoints (their metadata) are
cached per path, and `ARRAY_READS` counts every array read, by (folder, name).
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Optional, Sequence

import flax.linen as nn
import numpy as np

from prompt_tuning.models import params as params_lib
from prompt_tuning.models.t5 import T5Config
from prompt_tuning import trees as tree_lib
from prompt_tuning.readers import hf, t5x
from prompt_tuning.readers import config as config_lib
from prompt_tuning.readers.config import config_from_shapes
from prompt_tuning.trees import CheckpointMismatchError  # noqa: F401  (re-export)

# (checkpoint folder, parameter name) -> times read in this process.
ARRAY_READS: collections.Counter = collections.Counter()
_OPENED: dict[tuple[str, float], Any] = {}


def is_hf_folder(path: str) -> bool:
  """A folder with a Hugging Face config.json (not this project's T5Config record)."""
  config_path = os.path.join(path, "config.json")
  if not (os.path.isdir(path) and os.path.isfile(config_path)):
    return False
  try:
    with open(config_path) as f:
      record = json.load(f)
    return not (isinstance(record, dict) and config_lib.is_record(record))
  except (OSError, ValueError):  # Unreadable: the HF reader names the damage.
    return True


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
  """The T5Config of a checkpoint, from what is recorded with it, else its shapes.

  Reads metadata only, never an array. Recorded: a Hugging Face
  config.json, this project's config.json (every T5Config field), or a T5X
  run's config.gin (see readers/config.py). A T5X checkpoint with nothing
  recorded gives its sizes through its shapes, and
  `relative_attention_max_distance` 128 unless given. A given
  `relative_attention_max_distance` that contradicts the recorded one is an
  error naming both.
  """
  recorded, source = recorded_config(path)
  if relative_attention_max_distance:
    name = "relative_attention_max_distance"
    if name in recorded and recorded[name] != relative_attention_max_distance:
      raise ValueError(f"{name}={relative_attention_max_distance} was given but {source} "
                       f"records {name}={recorded[name]}; drop the flag to use the recorded "
                       "value")
    overrides[name] = relative_attention_max_distance
  ckpt = open_checkpoint(path)
  if hasattr(ckpt, "config"):
    return ckpt.config.replace(**overrides) if overrides else ckpt.config
  return config_from_shapes(ckpt.shapes(), **{**recorded, **overrides})


def recorded_config(path: str) -> tuple[dict[str, Any], str]:
  """(architecture fields, their file) recorded with a checkpoint; ({}, "") if none.

  A Hugging Face folder records them in config.json
  (`relative_attention_max_distance` only where the file has it); a T5X
  checkpoint may have this project's config.json or a T5X config.gin beside
  it or in its run folder.
  """
  if is_hf_folder(path):
    ckpt = open_checkpoint(path)
    fields = {name: getattr(ckpt.config, name) for name in config_lib.ARCHITECTURE_FIELDS}
    if "relative_attention_max_distance" not in ckpt.hf_config:
      del fields["relative_attention_max_distance"]
    return fields, os.path.join(getattr(ckpt, "dir", path), "config.json")
  return config_lib.recorded_fields(path)
