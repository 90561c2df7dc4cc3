"""HyperPrompt (He et al. 2022): a hypernetwork writes per-layer attention prompts.

A task embedding and a layer embedding go through one shared hypernetwork
(two dense layers) that outputs that layer's key and value prompts,
[P, heads, head_dim] each. The encoder prepends them to the keys and values
inside every self-attention (the model's per-layer conditioning, the
mechanism deep prompts use), so every layer is
conditioned on the task without changing the input sequence. Shape key:
B batch, L input length, P prompt length, N heads, D head dim, T tasks.

The backbone stays frozen under PROMPT_TUNING_RULES (only `encoder_prompt/...`
trains); `configs/prompts/hyperprompt.gin` has a switch that trains it too.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.models.t5 import T5Config
from prompt_tuning.prompts import base
from prompt_tuning.prompts import per_layer
from prompt_tuning.prompts.base import per_example_index, take_rows

Array = jax.Array


@registry.configurable
class HyperPrompt(per_layer.PerLayerPrompt):
  """Per-layer key/value prompts from (task embedding, layer embedding).

  Attributes:
    model_config: the backbone's config (encoder layers, heads, head dim);
      left None, the model spec fills it in.
    num_tasks: T; examples carry `task_index` in [0, T).
    length: P, prompt positions per layer.
    task_dim, layer_dim: embedding sizes; hidden_dim: the hypernetwork's width.
  """
  num_tasks: int
  length: int = 8
  task_dim: int = 32
  layer_dim: int = 16
  hidden_dim: int = 64
  index_feature: str = "task_index"
  model_config: Optional[T5Config] = None

  @nn.compact
  def layer_conditioning(self, batch_size: int, deterministic: bool = True, **features):
    cfg = per_layer.require_config(self)
    layers, n, d, p = cfg.num_encoder_layers, cfg.num_heads, cfg.head_dim, self.length
    index_B = per_example_index(features, self.index_feature, "HyperPrompt", self, batch_size)

    def param(name, shape, axes, init):
      return base.param(self, name, shape, axes, init, self.dtype)

    tasks = param("task_embedding", (self.num_tasks, self.task_dim), ("tasks", "task_dim"),
                  nn.initializers.normal(1.0))
    layer_emb = param("layer_embedding", (layers, self.layer_dim), ("layers", "layer_dim"),
                      nn.initializers.normal(1.0))
    w1 = param("hyper_in", (self.task_dim + self.layer_dim, self.hidden_dim),
               ("hyper_in", "hyper_hidden"), nn.initializers.lecun_normal())
    b1 = param("hyper_in_bias", (self.hidden_dim,), ("hyper_hidden",), nn.initializers.zeros)
    # Small outputs at the start: the prompts begin close to "no effect".
    w2 = param("hyper_out", (self.hidden_dim, 2 * p * n * d), ("hyper_hidden", "hyper_out"),
               nn.initializers.normal(0.02))
    b2 = param("hyper_out_bias", (2 * p * n * d,), ("hyper_out",), nn.initializers.zeros)

    task_BE = take_rows(tasks, index_B)
    b = task_BE.shape[0]
    # [layers, B, task_dim + layer_dim]: every (layer, example) pair.
    z = jnp.concatenate([jnp.broadcast_to(layer_emb[:, None], (layers, b, self.layer_dim)),
                         jnp.broadcast_to(task_BE[None], (layers, b, self.task_dim))], axis=-1)
    hidden = jax.nn.relu(z @ w1 + b1[None, None])
    kv = (hidden @ w2 + b2[None, None]).reshape(layers, b, 2, p, n, d)
    return per_layer.add({}, "encoder", "self_attention", "prefix", (kv[:, :, 0], kv[:, :, 1]))
