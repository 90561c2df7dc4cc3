"""Input-dependent prompt tuning (Levine et al. 2022): a prompt written per input.

A small trainable generator reads the frozen model's token embeddings of the
input (the seam's embedded input): a projection to the generator's width,
a few pre-norm Transformer layers over the input, then P learned queries that
cross-attend to the result; a last projection gives a [P, H] prompt per
example, joined to the input like a soft prompt. Padding is masked
throughout. Shape key: B batch, L input length, P prompt length, H model
width, G generator width.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.models import layers
from prompt_tuning.prompts import base
from prompt_tuning.prompts.base import join_prompt

Array = jax.Array


def _dense(features: int, axes: tuple[str, str], name: str) -> layers.Dense:
  return layers.Dense(features, axes, kernel_init=nn.initializers.lecun_normal(), name=name)


class _GeneratorLayer(nn.Module):
  width: int
  num_heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x_BLG: Array, bias: Array) -> Array:
    head_dim = self.width // self.num_heads
    y = layers.RMSNorm(name="pre_attention_norm")(x_BLG)
    y = layers.MultiHeadAttention(self.num_heads, head_dim, name="attention")(y, y, bias)
    x_BLG = x_BLG + y
    y = layers.RMSNorm(name="pre_mlp_norm")(x_BLG)
    y = layers.MlpBlock(self.mlp_dim, ("gelu",), name="mlp")(y)
    return x_BLG + y


@registry.configurable
class InputDependentPrompt(base.PromptModule):
  """Attributes: length P; width G, num_layers, num_heads, mlp_dim of the generator."""
  length: int
  width: int = 64
  num_layers: int = 1
  num_heads: int = 4
  mlp_dim: int = 128

  @property
  def num_positions(self) -> int:
    return self.length

  @nn.compact
  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **unused_features) -> tuple[Array, Array]:
    if self.width % self.num_heads:
      raise ValueError(f"Generator width {self.width} is not divisible by "
                       f"{self.num_heads} heads")
    h = embedded_BLH.shape[-1]
    x = _dense(self.width, ("prompt_embed", "generator"), "input_projection")(
        embedded_BLH.astype(jnp.float32))
    self_bias = layers.mask_to_bias(mask_BL[:, :, None] & mask_BL[:, None, :])
    for i in range(self.num_layers):
      x = _GeneratorLayer(self.width, self.num_heads, self.mlp_dim, name=f"layers_{i}")(
          x, self_bias)
    x = layers.RMSNorm(name="encoder_norm")(x)
    queries = base.param(self, "queries", (self.length, self.width), ("prompt", "generator"),
                         nn.initializers.normal(1.0))
    q_BPG = jnp.broadcast_to(queries[None], (x.shape[0],) + queries.shape)
    cross_bias = layers.mask_to_bias(jnp.broadcast_to(
        mask_BL[:, None, :], (x.shape[0], self.length, mask_BL.shape[1])))
    attended = layers.MultiHeadAttention(self.num_heads, self.width // self.num_heads,
                                         name="query_attention")(q_BPG, x, cross_bias)
    prompt_BPG = layers.RMSNorm(name="output_norm")(q_BPG + attended)
    prompt_BPH = _dense(h, ("generator", "prompt_embed"), "output_projection")(prompt_BPG)
    return join_prompt(prompt_BPH.astype(self.dtype), embedded_BLH, mask_BL, self.combine)
