"""Prompt attention masks: what the prompt positions see, and what sees them.

By default every encoder position attends to every other (T5 is
bidirectional), prompt positions included. `MaskedPrompt` wraps any prompt
module that adds positions to the input (SoftPrompt, MultiTaskPrompt,
PromptBank, ...) and restricts encoder self-attention between the two
groups, e.g. inputs that do not attend to the prompt, or a prompt that does
not attend to the inputs (it then stays the same whatever the input, as a
prefix in a causal model would), and, separately, whether the decoder's
cross-attention sees the prompt positions.

Shape key: B batch, L input length, P prompt positions, M = P + L.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.prompts import base

Array = jax.Array


def prompt_positions(num_prompt: int, mask_BL: Array, combine: str) -> Array:
  """[B, M] True where the joined sequence holds a prompt position.

  Joins an indicator through `base.join_prompt`, so it follows the same
  combine mode ("prefix", "after_first", "suffix") as the prompt did.
  """
  b, l = mask_BL.shape
  indicator, _ = base.join_prompt(jnp.ones((b, num_prompt, 1)), jnp.zeros((b, l, 1)), mask_BL,
                                  combine)
  return indicator[:, :, 0] > 0


def visibility(is_prompt_BM: Array, mask_BM: Array, *, inputs_see_prompt: bool,
               prompt_sees_inputs: bool, prompt_sees_prompt: bool) -> Array:
  """[B, M, M] query-by-key visibility of encoder self-attention."""
  q = is_prompt_BM[:, :, None]
  k = is_prompt_BM[:, None, :]
  rule = jnp.where(q & k, prompt_sees_prompt,
                   jnp.where(q, prompt_sees_inputs, jnp.where(k, inputs_see_prompt, True)))
  return rule & mask_BM[:, :, None] & mask_BM[:, None, :]


@registry.configurable
class MaskedPrompt(base.PromptModule):
  """A prompt module with attention masks between its positions and the input.

  Attributes:
    prompt: the wrapped module (its parameters are under
      `encoder_prompt/prompt/`); it must add positions (num_positions > 0).
    inputs_see_prompt: input positions attend to prompt positions.
    prompt_sees_inputs: prompt positions attend to input positions.
    prompt_sees_prompt: prompt positions attend to each other.
    decoder_sees_prompt: the decoder's cross-attention sees the prompt
      positions (False: only the input's encodings reach the decoder).
  """
  prompt: nn.Module
  inputs_see_prompt: bool = True
  prompt_sees_inputs: bool = True
  prompt_sees_prompt: bool = True
  decoder_sees_prompt: bool = True

  @property
  def num_positions(self) -> int:
    return base.num_positions(self.prompt)

  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **features):
    p = self.num_positions
    if p == 0:
      raise ValueError(f"MaskedPrompt wraps {type(self.prompt).__name__}, which adds no "
                       "positions to the input; wrap a prompt that does (e.g. SoftPrompt)")
    if not (self.prompt_sees_prompt or self.prompt_sees_inputs):
      raise ValueError("MaskedPrompt: prompt_sees_prompt and prompt_sees_inputs are both False, "
                       "so prompt positions would attend to nothing; allow one of them")
    out = self.prompt(embedded_BLH, tokens_BL, mask_BL, deterministic=deterministic, **features)
    x_BMH, mask_BM = out[:2]
    if len(out) > 2 or x_BMH.shape[1] != embedded_BLH.shape[1] + p:
      raise ValueError(f"MaskedPrompt: {type(self.prompt).__name__} must return (sequence "
                       f"[B, L + {p}, H], mask); got {len(out)} items of sequence length "
                       f"{x_BMH.shape[1]} for L={embedded_BLH.shape[1]}")
    is_prompt = prompt_positions(p, mask_BL, getattr(self.prompt, "combine", "prefix"))
    self_mask = visibility(is_prompt, mask_BM, inputs_see_prompt=self.inputs_see_prompt,
                           prompt_sees_inputs=self.prompt_sees_inputs,
                           prompt_sees_prompt=self.prompt_sees_prompt)
    if not self.decoder_sees_prompt:
      mask_BM = mask_BM & ~is_prompt
    return x_BMH, mask_BM, {"self_attention_mask": self_mask}

