"""Hugging Face PEFT prompt-tuning adapter folders, read and written without torch or peft.

A PEFT prompt-tuning adapter for a seq2seq T5 (the format of PEFT 0.21) is a
folder with

    adapter_config.json        PromptTuningConfig's fields (peft_type
                               "PROMPT_TUNING", task_type "SEQ_2_SEQ_LM",
                               num_virtual_tokens P, token_dim H, ...)
    adapter_model.safetensors  one tensor, "prompt_embeddings",
                               [P * num_transformer_submodules, H]

For seq2seq models PEFT puts the first P rows before the embedded encoder
input (in `forward` and in `generate`), with an all-ones attention mask over
them: this project's prefix soft prompt. With num_transformer_submodules=2
(PEFT's default for seq2seq) the other P rows are a decoder-side block that
PEFT 0.21's prompt tuning never uses; it is read past and written as 1.

This module is the one place that knows the format (file names, config
fields, the tensor's name): the reader, the writer and the checks between
them. `prompt_tuning.interop.peft` (export-peft / import-peft), prompt
provenance and serving call it. The `peft` package is needed only to load the
folder in PyTorch.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PROMPT_KEY = "prompt_embeddings"
PEFT_TYPE = "PROMPT_TUNING"
TASK_TYPE = "SEQ_2_SEQ_LM"


def is_adapter_folder(path: str) -> bool:
  return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_config(folder: str) -> dict[str, Any]:
  """adapter_config.json, checked to be a seq2seq prompt-tuning adapter."""
  path = os.path.join(folder, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{folder} is not a PEFT adapter folder: it has no {CONFIG_FILE}")
  try:
    with open(path) as f:
      config = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"Corrupt {path}: {e}") from e
  if not isinstance(config, dict):
    raise ValueError(f"Corrupt {path}: expected a JSON object")
  peft_type = config.get("peft_type")
  if peft_type != PEFT_TYPE:
    raise ValueError(f"{folder} is a PEFT {peft_type} adapter; only {PEFT_TYPE} adapters "
                     "(a soft prompt on the encoder input) can be read as a prompt")
  task_type = config.get("task_type")
  if task_type not in (None, TASK_TYPE):
    raise ValueError(f"{folder} is a PEFT prompt for task_type {task_type!r}; expected "
                     f"{TASK_TYPE!r} (an encoder-decoder such as T5)")
  for field in ("num_virtual_tokens", "token_dim"):
    if not isinstance(config.get(field), int) or config[field] < 1:
      raise ValueError(f"{path}: {field}={config.get(field)!r}; expected a positive integer")
  return config


def require_width(folder: str, config: dict[str, Any], width: int, backbone: str) -> None:
  """Refuses an adapter (its `read_config`) whose prompt is not `width` wide."""
  if config["token_dim"] != width:
    raise ValueError(f"{folder} is a PEFT prompt of width (token_dim) {config['token_dim']}, "
                     f"but the backbone {backbone} has width {width}: a prompt for another "
                     "model size")


def describe(config: dict[str, Any]) -> str:
  """One line about an adapter, from its config: type, virtual tokens and width."""
  return (f"PEFT {config['peft_type']} adapter, {config['num_virtual_tokens']} virtual tokens "
          f"x {config['token_dim']}")


def read_adapter(folder: str) -> tuple[np.ndarray, dict[str, Any]]:
  """(the encoder prompt [P, H] float32, adapter_config) of a PEFT prompt-tuning folder."""
  config = read_config(folder)
  path = os.path.join(folder, WEIGHTS_FILE)
  if not os.path.isfile(path):
    found = sorted(os.listdir(folder))
    hint = (" (.bin pickles are never loaded; save with safe_serialization=True)"
            if any(f.endswith(".bin") for f in found) else "")
    raise FileNotFoundError(f"{folder} has no {WEIGHTS_FILE}{hint}; found {found}")
  from prompt_tuning.readers import hf  # The one safetensors opener (errors included).
  st = hf.SafetensorsFile(path)
  if PROMPT_KEY not in st.keys():
    raise ValueError(f"{path} holds {st.keys()}; a prompt-tuning adapter holds {PROMPT_KEY!r}")
  p, h = config["num_virtual_tokens"], config["token_dim"]
  submodules = config.get("num_transformer_submodules") or 2  # PEFT's seq2seq default
  shape = st.shape(PROMPT_KEY)
  if shape != (p * submodules, h):
    raise ValueError(f"{path}: {PROMPT_KEY} has shape {list(shape)} but {CONFIG_FILE} says "
                     f"[num_virtual_tokens * num_transformer_submodules, token_dim] = "
                     f"[{p} * {submodules}, {h}]")
  value = st.read(PROMPT_KEY)
  if value.dtype.kind != "f":
    raise ValueError(f"{path}: {PROMPT_KEY} holds dtype {value.dtype}; expected floats")
  return np.asarray(value[:p], np.float32), config


def write_adapter(folder: str, prompt_PH: np.ndarray, *, num_heads: int, num_layers: int,
                  base_model_name_or_path: Optional[str] = None) -> dict[str, Any]:
  """Writes a [P, H] encoder prompt as a PEFT prompt-tuning adapter; returns the config.

  Args:
    num_heads, num_layers: the backbone's, recorded as PEFT records them
      (PEFT's prompt tuning does not use them).
    base_model_name_or_path: the Hugging Face model the adapter belongs to
      (a hub name or a folder), for `AutoPeftModel`; None leaves it unset.
  """
  from safetensors.numpy import save_file
  prompt_PH = np.ascontiguousarray(np.asarray(prompt_PH, np.float32))
  if prompt_PH.ndim != 2:
    raise ValueError(f"A prompt is [P, H]; got shape {prompt_PH.shape}")
  p, h = prompt_PH.shape
  config = {  # Every field of PEFT 0.21's PromptTuningConfig, as it saves them.
      "auto_mapping": None, "base_model_name_or_path": base_model_name_or_path,
      "inference_mode": True, "modules_to_save": None, "num_attention_heads": int(num_heads),
      "num_layers": int(num_layers), "num_transformer_submodules": 1,
      "num_virtual_tokens": int(p), "peft_type": PEFT_TYPE,
      "peft_version": None,  # PEFT fills in its own version when it loads the folder.
      "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "revision": None,
      "task_type": TASK_TYPE, "token_dim": int(h), "tokenizer_kwargs": None,
      "tokenizer_name_or_path": None,
  }
  os.makedirs(folder, exist_ok=True)
  weights = os.path.join(folder, WEIGHTS_FILE)
  save_file({PROMPT_KEY: prompt_PH}, weights + ".tmp", metadata={"format": "pt"})
  os.replace(weights + ".tmp", weights)
  config_path = os.path.join(folder, CONFIG_FILE)
  with open(config_path + ".tmp", "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  os.replace(config_path + ".tmp", config_path)
  return config
