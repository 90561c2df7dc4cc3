"""ATTEMPT (Asai et al. 2022): an input-dependent mixture of frozen source prompts.

Source prompts [S, P, H] come from `.npy` files and never train. A new target
prompt [P, H] and a small attention module do:

  x     = max-pool over the input's real positions of the embedded input  [B, H]
  h     = LayerNorm(W_up(SiLU(W_down x)))                                   [B, H]
  score = h . max-pool(prompt_j) for every source j and the target        [B, S+1]
  a     = softmax(score / temperature)
  prompt(x) = target + sum_j a_j prompt_j (over sources and target)       [B, P, H]

The attention parameters score prompts through their pooled contents, not
per-source weights, so sources can be added or removed without retraining.
Shape key: B batch, L input length, P prompt length, H model width, S sources.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import registry
from prompt_tuning.models import layers
from prompt_tuning.prompts import base
from prompt_tuning.prompts.base import join_prompt

Array = jax.Array


@functools.lru_cache(maxsize=32)
def load_source_prompts(files: tuple[str, ...]) -> np.ndarray:
  """[S, P, H] float32 from S `.npy` files, each [P, H] and all of one shape."""
  from prompt_tuning.prompts.initializers import load_npy
  if not files:
    raise ValueError("ATTEMPT needs at least one source prompt file")
  prompts = []
  for f in files:
    p = np.asarray(load_npy(f), np.float32)
    if p.ndim != 2:
      raise ValueError(f"Source prompt {f} has shape {p.shape}; expected [P, H]")
    if prompts and p.shape != prompts[0].shape:
      raise ValueError(f"Source prompt {f} has shape {p.shape} but {files[0]} has "
                       f"{prompts[0].shape}; all sources must share one [P, H]")
    prompts.append(p)
  return np.stack(prompts)


def _max_pool(x_BLH: Array, mask_BL: Array) -> Array:
  return jnp.max(jnp.where(mask_BL[:, :, None], x_BLH, -jnp.inf), axis=1)


@registry.configurable
class AttemptPrompt(base.PromptModule):
  """Attributes:
    source_files: `.npy` source prompts (frozen), each [P, H].
    temperature: the softmax temperature (the paper uses the model width).
    bottleneck: the attention module's down-projection size.
    init: the target prompt's initializer.
  """
  source_files: Sequence[str]
  temperature: float = 1.0
  bottleneck: int = 32
  init: Callable[..., Array] = nn.initializers.uniform(0.5)

  @property
  def num_positions(self) -> int:
    return int(load_source_prompts(tuple(self.source_files)).shape[1])

  def setup(self):
    sources = load_source_prompts(tuple(self.source_files))
    _, p, h = sources.shape
    self.target = base.param(self, "target", (p, h), ("prompt", "prompt_embed"), self.init,
                             self.dtype)
    self.down = layers.Dense(self.bottleneck, ("prompt_embed", "attention_bottleneck"),
                             kernel_init=nn.initializers.lecun_normal())
    self.up = layers.Dense(h, ("attention_bottleneck", "prompt_embed"),
                           kernel_init=nn.initializers.lecun_normal())
    self.layer_norm = nn.LayerNorm()

  def attention(self, embedded_BLH: Array, mask_BL: Array) -> tuple[Array, Array, Array]:
    """(mixture weights [B, S+1] over sources then target, sources, target)."""
    sources = jnp.asarray(load_source_prompts(tuple(self.source_files)))
    if embedded_BLH.shape[-1] != sources.shape[-1]:
      raise ValueError(f"Source prompts are {sources.shape[1]}x{sources.shape[2]} but the "
                       f"model width is {embedded_BLH.shape[-1]}")
    x_BH = _max_pool(embedded_BLH.astype(jnp.float32), mask_BL)
    h_BH = self.layer_norm(self.up(jax.nn.silu(self.down(x_BH))))
    candidates = jnp.concatenate([sources, self.target[None].astype(jnp.float32)], axis=0)
    keys_CH = jnp.max(candidates, axis=1)  # max-pooled prompts [S+1, H]
    weights_BC = jax.nn.softmax(h_BH @ keys_CH.T / self.temperature, axis=-1)
    return weights_BC, sources, self.target

  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **unused_features) -> tuple[Array, Array]:
    weights_BC, sources, target = self.attention(embedded_BLH, mask_BL)
    candidates = jnp.concatenate([sources, target[None].astype(jnp.float32)], axis=0)
    mixture_BPH = jnp.einsum("bc,cph->bph", weights_BC, candidates)
    prompt_BPH = target[None].astype(jnp.float32) + mixture_BPH
    return join_prompt(prompt_BPH, embedded_BLH, mask_BL, self.combine)
