"""The soft prompt of Lester et al. (2021): a learned [P, H] joined to the embedded input.

Shape key: B batch, L input length, P prompt length, H model width.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.prompts import base
from prompt_tuning.prompts.base import COMBINE_MODES, join_prompt  # noqa: F401  (re-export)

Array = jax.Array


@registry.configurable
class SoftPrompt(base.PromptModule):
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

  @property
  def num_positions(self) -> int:
    return self.length

  @nn.compact
  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **unused_features) -> tuple[Array, Array]:
    prompt_PH = base.param(self, "prompt", (self.length, embedded_BLH.shape[-1]),
                           ("prompt", "prompt_embed"), self.init, self.dtype)
    prompt_BPH = jnp.broadcast_to(prompt_PH[None], (embedded_BLH.shape[0],) + prompt_PH.shape)
    return join_prompt(prompt_BPH, embedded_BLH, mask_BL, self.combine)
