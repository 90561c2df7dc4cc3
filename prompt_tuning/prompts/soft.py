"""The soft prompt of Lester et al. (2021): a learned [P, H] joined to the embedded input.

Shape key: B batch, L input length, P prompt length, H model width.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
COMBINE_MODES = ("prefix", "after_first", "suffix")


def join_prompt(prompt_BPH: Array, embedded_BLH: Array, mask_BL: Array, combine: str
                ) -> tuple[Array, Array]:
  """Inserts a per-example prompt into the embedded input; returns (x [B, P+L, H], mask).

  `prefix` puts the prompt first; `after_first` after the first input token;
  `suffix` just before each row's last real token (its EOS). Prompt positions
  are always visible; padding stays at the end of each row.
  """
  b, p = prompt_BPH.shape[:2]
  ones = jnp.ones((b, p), mask_BL.dtype)
  prompt_BPH = prompt_BPH.astype(embedded_BLH.dtype)
  if combine == "prefix":
    return (jnp.concatenate([prompt_BPH, embedded_BLH], axis=1),
            jnp.concatenate([ones, mask_BL], axis=1))
  if combine == "after_first":
    return (jnp.concatenate([embedded_BLH[:, :1], prompt_BPH, embedded_BLH[:, 1:]], axis=1),
            jnp.concatenate([mask_BL[:, :1], ones, mask_BL[:, 1:]], axis=1))
  if combine == "suffix":
    # Rows differ in length, so gather by position: before the insert point
    # s come input[t], then prompt[t - s], then input[t - P].
    s = jnp.maximum(jnp.sum(mask_BL.astype(jnp.int32), axis=1) - 1, 0)[:, None]  # EOS index
    t = jnp.arange(embedded_BLH.shape[1] + p)[None, :]
    in_prompt = (t >= s) & (t < s + p)
    src = jnp.clip(jnp.where(t < s, t, t - p), 0, embedded_BLH.shape[1] - 1)
    from_input = jnp.take_along_axis(embedded_BLH, src[:, :, None], axis=1)
    from_prompt = jnp.take_along_axis(prompt_BPH, jnp.clip(t - s, 0, p - 1)[:, :, None], axis=1)
    x = jnp.where(in_prompt[:, :, None], from_prompt, from_input)
    mask = jnp.where(in_prompt, True, jnp.take_along_axis(mask_BL, src, axis=1))
    return x, mask.astype(mask_BL.dtype)
  raise ValueError(f"Unknown prompt combine mode {combine!r}; expected one of {COMBINE_MODES}")


class SoftPrompt(nn.Module):
  """A [P, H] prompt parameter (axes `prompt`, `prompt_embed`), one for every example.

  Attributes:
    length: P, the number of prompt positions.
    init: a Flax initializer `(rng, shape, dtype) -> [P, H]` (see
      prompt_tuning.prompts.initializers).
    combine: where the prompt goes: "prefix" (default), "after_first" or
      "suffix" (before EOS).
    dtype: the prompt's parameter dtype (kept float32 when the backbone is
      stored in bfloat16).
  """
  length: int
  init: Callable[..., Array] = nn.initializers.uniform(0.5)
  combine: str = "prefix"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **unused_features) -> tuple[Array, Array]:
    if self.combine not in COMBINE_MODES:
      raise ValueError(f"Unknown prompt combine mode {self.combine!r}; "
                       f"expected one of {COMBINE_MODES}")
    prompt_PH = self.param("prompt", nn.with_logical_partitioning(
        self.init, ("prompt", "prompt_embed")), (self.length, embedded_BLH.shape[-1]), self.dtype)
    prompt_BPH = jnp.broadcast_to(prompt_PH[None], (embedded_BLH.shape[0],) + prompt_PH.shape)
    return join_prompt(prompt_BPH, embedded_BLH, mask_BL, self.combine)
