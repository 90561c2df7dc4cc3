"""A T5Config from a T5X checkpoint's parameter shapes (T5X checkpoints store no config).

`prompt_tuning.readers.config_for(path)` uses it for T5X checkpoints and
config.json for Hugging Face folders.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

from prompt_tuning.models.t5 import T5Config


def config_from_shapes(shapes: Mapping[str, tuple[int, ...]], **overrides) -> T5Config:
  """Reads sizes off T5X-named shapes; activations are guessed from the MLP names.

  `relative_attention_max_distance` cannot be seen in shapes: it defaults to
  128 (every published T5) unless given in `overrides`.
  """
  def layer_count(stack):
    ids = {int(m[1]) for k in shapes if (m := re.match(rf"^{stack}/layers_(\d+)/", k))}
    if ids != set(range(len(ids))) or not ids:
      raise ValueError(f"Cannot infer the {stack} depth from layer names {sorted(ids)}")
    return len(ids)

  try:
    vocab, emb = shapes["token_embedder/embedding"]
    _, joined = shapes["encoder/layers_0/attention/query/kernel"]
    wi = sorted(k for k in shapes if re.match(r"^encoder/layers_0/mlp/wi(_\d+)?/kernel$", k))
    mlp = shapes[wi[0]][1]
  except (KeyError, IndexError) as e:
    raise ValueError(f"Not a T5X-named T5 checkpoint: missing {e}") from e
  shared = "encoder/relpos_bias/rel_embedding" in shapes
  rel_key = ("encoder/relpos_bias/rel_embedding" if shared
             else "encoder/layers_0/relpos_bias/rel_embedding")
  if rel_key not in shapes:
    raise ValueError("Not a T5X-named T5 checkpoint: no relative position table found")
  heads, buckets = shapes[rel_key]
  gated = len(wi) > 1
  kwargs = dict(
      vocab_size=vocab, emb_dim=emb, num_heads=heads, head_dim=joined // heads, mlp_dim=mlp,
      num_encoder_layers=layer_count("encoder"), num_decoder_layers=layer_count("decoder"),
      mlp_activations=("gelu", "linear") if gated else ("relu",),
      logits_via_embedding="decoder/logits_dense/kernel" not in shapes,
      relative_attention_num_buckets=buckets, shared_relative_bias=shared)
  kwargs.update(overrides)
  return T5Config(**kwargs)



# --- Configs recorded beside a checkpoint ---------------------------------------
#
# A checkpoint's architecture is read from what was written with it, first
# found wins: this project's `config.json` (every T5Config field, tagged with
# RECORD_FORMAT; older backbones wrote the same as `config.json.txt`), then a
# T5X run's `config.gin` (the operative config T5X saves in MODEL_DIR). Both
# are looked for in the checkpoint folder and the folders above it up to the
# run folder (`MODEL_DIR/checkpoint_N`, `MODEL_DIR/checkpoints/N`). A T5X
# checkpoint with none of them has only its shapes:
# `relative_attention_max_distance` then stays 128.

RECORD_FILE = "config.json"
LEGACY_RECORD_FILE = "config.json.txt"
RUN_CONFIG_FILE = "config.gin"
RECORD_FORMAT = "prompt_tuning.T5Config"
# The record's entry for the backbone's vocabulary (readers/vocabulary.py writes it).
VOCABULARY_KEY = "vocabulary"

# The fields that fix what a checkpoint computes; the rest (dtypes, dropout,
# scanning, rematerialization) are the run's to choose.
ARCHITECTURE_FIELDS = ("vocab_size", "emb_dim", "num_heads", "num_encoder_layers",
                       "num_decoder_layers", "head_dim", "mlp_dim", "mlp_activations",
                       "logits_via_embedding", "relative_attention_num_buckets",
                       "relative_attention_max_distance", "shared_relative_bias",
                       "layer_norm_epsilon")


def write_record(folder: str, config: T5Config) -> str:
  """Writes `folder/config.json`: every T5Config field, for `recorded_fields` to read.

  A vocabulary recorded there before (readers/vocabulary.py `record`) is kept.
  """
  import dataclasses
  import json
  import os
  path = os.path.join(folder, RECORD_FILE)
  record = {"format": RECORD_FORMAT, **dataclasses.asdict(config)}
  if os.path.isfile(path):  # Rewriting the fields keeps the recorded vocabulary.
    try:
      with open(path) as f:
        old = json.load(f)
      if isinstance(old, dict) and VOCABULARY_KEY in old:
        record[VOCABULARY_KEY] = old[VOCABULARY_KEY]
    except ValueError:
      pass
  with open(path + ".tmp", "w") as f:
    f.write(json.dumps(record, indent=1))
  os.replace(path + ".tmp", path)
  return path


def is_record(mapping: Mapping) -> bool:
  """Whether a config.json is this project's T5Config record (not a Hugging Face config)."""
  return mapping.get("format") == RECORD_FORMAT or ("emb_dim" in mapping
                                                     and "d_model" not in mapping)


def _folders_up(path: str) -> list[str]:
  """The checkpoint folder, and the run folders above it (`checkpoint_N`, `checkpoints/N`)."""
  import os
  folder = os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path))
  out = [folder]
  while re.fullmatch(r"checkpoint_\d+|\d+|checkpoints", os.path.basename(out[-1])):
    out.append(os.path.dirname(out[-1]))
  return out


def _fields_from_json(path: str) -> dict:
  import json
  with open(path) as f:
    record = json.load(f)
  if not isinstance(record, dict) or not is_record(record):
    return {}
  return {k: (tuple(v) if isinstance(v, list) else v) for k, v in record.items()
          if k in ARCHITECTURE_FIELDS}


_GIN_LINE = re.compile(r"^\s*(?:[\w.]+\.)?T5Config\.(\w+)\s*=\s*(.+?)\s*$")


def _fields_from_gin(path: str) -> dict:
  """T5Config's literal bindings in a saved config.gin (T5X's `network.T5Config.x = v`)."""
  import ast
  fields = {}
  with open(path) as f:
    for line in f:
      m = _GIN_LINE.match(line)
      if not m or m[1] not in ARCHITECTURE_FIELDS:
        continue
      try:
        value = ast.literal_eval(m[2])
      except (ValueError, SyntaxError):  # A macro or a reference: not a recorded value.
        continue
      fields[m[1]] = tuple(value) if isinstance(value, list) else value
  return fields


def recorded_fields(path: str) -> tuple[dict, str]:
  """(architecture fields, the file they came from) recorded beside a T5X checkpoint.

  Returns ({}, "") when nothing is recorded.
  """
  import os
  for folder in _folders_up(path):
    for name, read in ((RECORD_FILE, _fields_from_json), (LEGACY_RECORD_FILE, _fields_from_json),
                       (RUN_CONFIG_FILE, _fields_from_gin)):
      candidate = os.path.join(folder, name)
      if os.path.isfile(candidate):
        fields = read(candidate)
        if fields:
          return fields, candidate
  return {}, ""


def contradictions(config: T5Config, recorded: Mapping, source: str,
                   fields: Sequence[str] = ARCHITECTURE_FIELDS) -> list[str]:
  """'name: bound V, recorded R in SOURCE' for every field the config gets wrong."""
  out = []
  for name in fields:
    if name in recorded and getattr(config, name) != recorded[name]:
      out.append(f"{name}={getattr(config, name)!r} is bound but {source} records "
                 f"{name}={recorded[name]!r}")
  return out
