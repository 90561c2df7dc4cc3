"""A T5Config from a T5X checkpoint's parameter shapes (T5X checkpoints store no config).

`prompt_tuning.readers.config_for(path)` uses it for T5X checkpoints and
config.json for Hugging Face folders.
"""

from __future__ import annotations

import re
from typing import Mapping

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

