"""Where a prompt came from: a sidecar JSON beside every exported prompt, checked on load.

A soft prompt means something only on the backbone it was trained with. Each
exported prompt `p.npy` gets `p.provenance.json` (a PEFT adapter folder gets
`provenance.json` inside it):

    {"format": "prompt-tuning provenance 1",
     "backbone": {"fingerprint": "3f0c...", "checkpoint": "/ckpts/base"},
     "task": "rte", "step": 1200, "metrics": {"rte/validation/greedy": {...}},
     "prompt": {"shape": [100, 768], "digest": "..."}}

A `MODEL_DIR/best/` folder that training writes (its `best.json` beside the
exported prompt files) stands for the prompt file in it, so it can be given
wherever a prompt file can (`best_prompt_file`).

`load_prompt` is the one way eval, infer (the from-file initializer), serve,
recycle and export-peft read a prompt file, and `check` the one check they
share: a prompt whose sidecar names another backbone fails with one line
naming both fingerprints and suggesting `prompt-tuning recycle`, unless
`allow_mismatch`; a prompt without a sidecar loads with a warning.

The fingerprint hashes what the weights fix, not how they are stored: the
config fields that the parameter shapes determine, and the embedding table
rounded to bfloat16. A T5X checkpoint and its Hugging Face conversion, or a
float32 model and its bfloat16 copy, share one fingerprint; another
pretraining run, or the same model fine-tuned, does not. The table is the one
array hashed (measured on a shared 2-core AMD EPYC, median of 3: 0.2 s for
32128 x 768, 1.4 s for 32128 x 4096), and it is the copy the binaries read
anyway: the from-file initializer hashes the table the setup hands it
(`prompts.base.InitContext`) instead of reading it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Callable, Mapping, Optional

import ml_dtypes
import numpy as np

from prompt_tuning import trees as tree_lib

FORMAT = "prompt-tuning provenance 1"
FOLDER_SIDECAR = "provenance.json"
# What marks the best prompt's folder (runtime/best_prompts.py, written by train).
BEST_JSON = "best.json"
EMBEDDING = "token_embedder/embedding"
# T5Config fields the parameter shapes fix (a T5X checkpoint stores nothing else).
_CONFIG_FIELDS = ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                  "num_encoder_layers", "num_decoder_layers", "relative_attention_num_buckets",
                  "shared_relative_bias", "logits_via_embedding")

log = logging.getLogger(__name__)


def load_npy(path: str) -> np.ndarray:
  """np.load with pickles refused and a clear error for anything that is not an array."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Prompt/embedding file not found: {path}")
  try:
    return np.load(path, allow_pickle=False)
  except ValueError as e:
    raise ValueError(f"{path} is not a plain numeric .npy array (pickled objects are "
                     f"refused): {e}") from e


class BackboneMismatchError(ValueError):
  """A prompt trained on one backbone, loaded onto another."""


def fingerprint(config: Any, embedding_VH: Any) -> str:
  """16 hex digits naming a backbone: its shape-fixed config and bfloat16 embedding table."""
  table = np.ascontiguousarray(np.asarray(embedding_VH).astype(ml_dtypes.bfloat16))
  described = {f: getattr(config, f) for f in _CONFIG_FIELDS}
  described["gated_mlp"] = len(config.mlp_activations) > 1
  described["embedding_shape"] = list(table.shape)
  h = hashlib.blake2b(digest_size=8)
  h.update(json.dumps(described, sort_keys=True).encode())
  h.update(table.view(np.uint16).tobytes())
  return h.hexdigest()


def backbone_fingerprint(checkpoint: str) -> str:
  """The fingerprint of a T5X checkpoint or HF folder: reads its config and embedding table.

  Where the table is already in memory, `fingerprint(config, table)` reads nothing.
  """
  from prompt_tuning import readers
  return fingerprint(readers.config_for(checkpoint), readers.read_array(checkpoint, EMBEDDING))


def params_fingerprint(config: Any, params: Any) -> Optional[str]:
  """The fingerprint from a parameter tree holding the embedding (global arrays gathered)."""
  table = tree_lib.flatten(params).get(EMBEDDING)
  if table is None:
    return None
  if not getattr(table, "is_fully_addressable", True):
    from jax.experimental import multihost_utils  # Every process calls this together.
    table = multihost_utils.process_allgather(table, tiled=True)
  return fingerprint(config, np.asarray(table))


def best_prompt_file(path: str) -> Optional[str]:
  """The prompt file of a best/ folder written by train (None for anything else).

  The folder holds one exported `.npy` per prompt parameter; one prompt is
  what a prompt file stands for, so a folder of several must be given by file.
  """
  if not (os.path.isdir(path) and os.path.isfile(os.path.join(path, BEST_JSON))):
    return None
  files = sorted(f for f in os.listdir(path) if f.endswith(".npy"))
  if len(files) != 1:
    raise ValueError(f"{path} (the best prompts of a training run) holds {len(files)} prompt "
                     f"files {files}; give the one meant: {os.path.join(path, '<file>.npy')}")
  return os.path.join(path, files[0])


def sidecar_path(prompt_path: str) -> str:
  """`p.npy` -> `p.provenance.json`; a folder (PEFT adapter) -> `folder/provenance.json`;
  a best/ folder -> its prompt file's sidecar."""
  prompt_path = best_prompt_file(prompt_path) or prompt_path
  if os.path.isdir(prompt_path):
    return os.path.join(prompt_path, FOLDER_SIDECAR)
  stem = prompt_path[:-len(".npy")] if prompt_path.endswith(".npy") else prompt_path
  return stem + ".provenance.json"


def prompt_digest(prompt_PH: Any) -> str:
  value = np.ascontiguousarray(np.asarray(prompt_PH, np.float32))
  return hashlib.blake2b(value.tobytes(), digest_size=8).hexdigest()


def record(backbone: str, prompt_PH: Any, *, checkpoint: Optional[str] = None,
           task: Optional[str] = None, step: Optional[int] = None,
           metrics: Optional[Mapping[str, Any]] = None, **extra: Any) -> dict[str, Any]:
  """A sidecar's content: `backbone` is the fingerprint, the rest what is known."""
  value = np.asarray(prompt_PH)
  out = {"format": FORMAT,
         "backbone": {"fingerprint": backbone,
                      "checkpoint": os.path.abspath(checkpoint) if checkpoint and
                      os.path.exists(checkpoint) else checkpoint},
         "task": task, "step": None if step is None else int(step),
         "metrics": dict(metrics or {}),
         "prompt": {"shape": list(value.shape), "digest": prompt_digest(value)}}
  out.update(extra)
  return out


def carry(source_path: str, dest_path: str, backbone: str, prompt_PH: Any,
          checkpoint: Optional[str] = None, keep_metrics: bool = True, **extra: Any) -> str:
  """Writes `dest_path`'s sidecar for `backbone`, carrying the task and step of `source_path`'s.

  `keep_metrics=False` drops the source's metrics (they were measured on
  another backbone). `source_checked` records whether the source had a
  sidecar to check, or the backbone is only the caller's word.
  """
  source = read(source_path) or {}
  return write(dest_path, record(
      backbone, prompt_PH, checkpoint=checkpoint, task=source.get("task"),
      step=source.get("step"), metrics=source.get("metrics") if keep_metrics else None,
      source_checked=bool(source), **extra))


def write(prompt_path: str, content: Mapping[str, Any]) -> str:
  """Writes the sidecar of `prompt_path` atomically; returns its path."""
  path = sidecar_path(prompt_path)
  tmp = path + ".tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(content, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def read(prompt_path: str) -> Optional[dict[str, Any]]:
  """The sidecar of a prompt file or folder, or None when it has none."""
  path = sidecar_path(prompt_path)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      content = json.load(f)
    content["backbone"]["fingerprint"]  # noqa: B018  (the one field a check needs)
  except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"Corrupt provenance file {path}: {e}; expected a JSON object with "
                     "backbone.fingerprint (delete it to load the prompt unchecked)") from e
  return content


def add_metrics(prompt_path: str, name: str, metrics: Mapping[str, Any]) -> bool:
  """Records eval metrics under `name` (e.g. 'rte/validation') in an existing sidecar."""
  content = read(prompt_path)
  if content is None:
    return False
  content.setdefault("metrics", {})[name] = {k: float(v) for k, v in metrics.items()}
  write(prompt_path, content)
  return True


def check(prompt_path: str, prompt_PH: Any,
          backbone: Optional[str | Callable[[], str]] = None,
          checkpoint: Optional[str] = None, allow_mismatch: bool = False
          ) -> Optional[dict[str, Any]]:
  """Raises BackboneMismatchError unless the prompt's sidecar names `backbone`.

  Args:
    prompt_path: the prompt file or folder (its sidecar is found from it).
    prompt_PH: the prompt as read, to tell a stale sidecar from its own.
    backbone: the fingerprint of the backbone it is loaded onto, or a
      function computing it; None computes it from `checkpoint`. Either is
      computed only when there is a sidecar to check.
    checkpoint: that backbone's path, named in the error. With neither, the
      check is skipped with a warning.
    allow_mismatch: log the mismatch instead of raising.
  Returns:
    The sidecar, or None when there is none.
  """
  content = read(prompt_path)
  if content is None:
    log.warning("%s has no provenance sidecar (%s): it is loaded without checking that it "
                "was trained on this backbone", prompt_path, sidecar_path(prompt_path))
    return None
  digest = content.get("prompt", {}).get("digest")
  if digest and digest != prompt_digest(prompt_PH):
    log.warning("%s does not hold the prompt its sidecar %s describes (the file was replaced?):"
                " its backbone is not checked", prompt_path, sidecar_path(prompt_path))
    return None
  if callable(backbone):
    backbone = backbone()
  elif backbone is None and checkpoint:
    backbone = backbone_fingerprint(checkpoint)
  if backbone is None:
    log.warning("%s: no backbone given, so its provenance is not checked", prompt_path)
    return content
  theirs = content["backbone"]["fingerprint"]
  if theirs != backbone:
    trained_on = content["backbone"].get("checkpoint") or "another backbone"
    message = (f"{prompt_path} was trained on backbone {theirs} ({trained_on}), but this "
               f"backbone{' ' + checkpoint if checkpoint else ''} is {backbone}; move the "
               "prompt with `prompt-tuning recycle --source_checkpoint=... "
               f"--target_checkpoint=... --prompt={prompt_path}`, or pass "
               "--allow_backbone_mismatch (gin: ALLOW_BACKBONE_MISMATCH=True) to use it anyway")
    if not allow_mismatch:
      raise BackboneMismatchError(message)
    log.warning("allowed: %s", message)
  return content


def read_prompt(path: str) -> np.ndarray:
  """A prompt from a `.npy` file, a PEFT adapter folder or a best/ folder written by
  train, unchecked (see `load_prompt`)."""
  from prompt_tuning.readers import peft
  path = best_prompt_file(path) or path
  if os.path.isdir(path):
    if not peft.is_adapter_folder(path):
      raise FileNotFoundError(f"{path} is a folder but not a PEFT adapter (no "
                              f"{peft.CONFIG_FILE}) nor a training run's best/ folder (no "
                              f"{BEST_JSON}); expected a .npy prompt or one of those folders")
    return peft.read_adapter(path)[0]
  value = load_npy(path)
  if value.dtype.kind not in "fiu":
    raise ValueError(f"Prompt file {path} holds dtype {value.dtype}; expected a float array")
  return value


def load_prompt(path: str, backbone: Optional[str | Callable[[], str]] = None,
                checkpoint: Optional[str] = None,
                allow_mismatch: bool = False) -> np.ndarray:
  """A prompt from a `.npy` file or a PEFT adapter folder, its provenance checked.

  Args:
    path: a `.npy` prompt ([P, H]), a PEFT prompt-tuning adapter folder, or
      a training run's best/ folder (MODEL_DIR/best).
    backbone: the fingerprint of the backbone it is for (see `fingerprint`),
      or a function computing it; None computes it from `checkpoint`. Either
      is computed only when there is a sidecar to check.
    checkpoint: the backbone's T5X checkpoint or HF folder.
    allow_mismatch: load a prompt of another backbone anyway (logged).
  """
  value = read_prompt(path)
  check(path, value, backbone, checkpoint, allow_mismatch)
  return value
