"""Recursive LMs (Levine et al. 2022, sec. 5): the same frozen T5 run twice.

- Textual recursion (`TextualRecursionT5`): pass 1 runs the model with
  prompt 1 and greedily decodes an intermediate answer; pass 2 reads the
  input followed by that answer, with prompt 2. Text is not differentiable,
  so the prompts train in two stages as in the paper: stage 1
  (`train_pass = 1`) is plain prompt tuning of prompt 1; stage 2
  (`train_pass = 2`) trains prompt 2 with prompt 1 frozen (loaded from stage
  1's exported `encoder_prompt.first.npy`). configs/prompts/recursion_textual.gin.
- Neural recursion (`NeuralRecursionT5`): pass 1 runs the encoder with
  prompt 1; its output goes through a trainable connector (a small
  Transformer over it, then P learned queries and a projection into the
  embedding space, `QueryGenerator`) and enters pass 2 as its prompt. Both
  passes use the same frozen T5, and training backpropagates through both:
  the loss reaches the connector and, through pass 1's frozen encoder,
  prompt 1. configs/prompts/recursion_neural.gin.

The paper's recursion ran a 7B decoder-only LM twice; here pass 1 of neural
recursion stops at the encoder output (the encoder-decoder's reading of the
input), which is what the connector maps into pass 2.

Shape key: B batch, L input length, A intermediate answer length, P prompt
length, H model width.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import registry
from prompt_tuning.models.t5 import T5
from prompt_tuning.prompts import base
from prompt_tuning.prompts.base import join_prompt
from prompt_tuning.prompts.input_dependent import READING, LengthPrompt, QueryGenerator

Array = jax.Array
PASS = "_recursion_pass"  # prompt feature set by the wrappers: 1 or 2


@registry.configurable
class RecursionPrompts(LengthPrompt):
  """Prompt 1 ("first", [P, H]) and pass 2's prompt: a second soft prompt
  ("second", textual) or the connector ("connector", neural).

  Attributes:
    length: P, for both passes.
    neural: False gives textual recursion's two soft prompts; True gives
      prompt 1 and the connector.
    first_init, second_init: the soft prompts' initializers.
    connector_width, connector_layers, query_layers, num_heads, mlp_dim: the
      connector's small Transformer (over pass 1's output) and query layers.
    freeze_first: prompt 1 stays frozen under the default freezing rules
      (textual recursion's stage 2, with `first_init` reading stage 1's prompt),
      as `SECOND_PASS_RULES` in configs/prompts/recursion_textual.gin does.
  """
  neural: bool = False
  first_init: Callable[..., Array] = nn.initializers.uniform(0.5)
  second_init: Callable[..., Array] = nn.initializers.uniform(0.5)
  connector_width: int = 64
  connector_layers: int = 1
  query_layers: int = 1
  num_heads: int = 4
  mlp_dim: int = 128
  freeze_first: bool = False

  def frozen_patterns(self) -> tuple[str, ...]:
    """Parameters under this module that stay frozen (prompt 1, in stage 2)."""
    return ("encoder_prompt/first",) if self.freeze_first else ()

  @nn.compact
  def __call__(self, embedded_BLH: Array, tokens_BL: Array, mask_BL: Array,
               deterministic: bool = True, **features) -> tuple[Array, Array]:
    b, h = embedded_BLH.shape[0], embedded_BLH.shape[-1]
    which = features.get(PASS)
    if which not in (1, 2):
      raise ValueError("RecursionPrompts runs inside a recursion wrapper: bind "
                       "ModelSpec.model_class = @TextualRecursionT5 or @NeuralRecursionT5")
    first = base.param(self, "first", (self.length, h), ("prompt", "prompt_embed"),
                       self.first_init, self.dtype)
    if which == 1:
      prompt_BPH = jnp.broadcast_to(first[None], (b,) + first.shape)
    elif not self.neural:
      second = base.param(self, "second", (self.length, h), ("prompt", "prompt_embed"),
                          self.second_init, self.dtype)
      prompt_BPH = jnp.broadcast_to(second[None], (b,) + second.shape)
    else:
      reading, reading_mask = features[READING]
      prompt_BPH = QueryGenerator(self.length, self.connector_width, h, self.query_layers,
                                  self.num_heads, self.mlp_dim,
                                  self_layers=self.connector_layers, name="connector")(
                                      reading, reading_mask)
    return join_prompt(prompt_BPH.astype(embedded_BLH.dtype), embedded_BLH, mask_BL,
                       self.combine)


def append_tokens(tokens_BL: Array, extra_BA: Array) -> Array:
  """[B, L + A]: each row's real tokens, then its extra tokens (up to their first
  0), then padding: the pass-2 input of textual recursion."""
  length = jnp.sum((tokens_BL > 0).astype(jnp.int32), axis=1, keepdims=True)  # [B, 1]
  total = tokens_BL.shape[1] + extra_BA.shape[1]
  t = jnp.arange(total)[None, :]
  padded_in = jnp.pad(tokens_BL, ((0, 0), (0, extra_BA.shape[1])))
  padded_extra = jnp.pad(extra_BA, ((0, 0), (0, tokens_BL.shape[1])))
  from_extra = jnp.take_along_axis(padded_extra, jnp.clip(t - length, 0, total - 1), axis=1)
  out = jnp.where(t < length, padded_in, from_extra)
  # Real tokens first: anything after the first 0 of the extra part is padding.
  return jnp.where(jnp.cumsum(out == 0, axis=1) > 0, 0, out)


def _with_pass(features: Optional[Mapping[str, Any]], which: int, **more) -> dict:
  return {**(features or {}), PASS: which, **more}


@registry.configurable
class TextualRecursionT5(T5):
  """Pass 1 decodes an answer with prompt 1; pass 2 encodes input + answer with prompt 2.

  Attributes:
    answer_length: A, the longest intermediate answer (greedy, EOS excluded).
    train_pass: 1 runs pass 1 only (stage 1: prompt tuning of prompt 1);
      2 runs both passes (stage 2, eval and infer).
  """
  answer_length: int = 8
  train_pass: int = 2

  def intermediate_answer(self, encoder_input_tokens: Array,
                          prompt_features: Optional[Mapping[str, Any]] = None) -> Array:
    """Pass 1's greedy answer [B, A] (0 after its end; EOS dropped)."""
    encoded, mask = self.encoder(encoder_input_tokens, deterministic=True,
                                 prompt_features=_with_pass(prompt_features, 1))
    b, a = encoder_input_tokens.shape[0], self.answer_length
    sequence = jnp.zeros((b, a + 1), jnp.int32)  # start token 0, then the answer
    ended = jnp.zeros((b,), bool)
    # Unrolled: A is a handful of tokens, and each step re-runs the decoder on
    # the prefix (causal attention makes the later positions irrelevant).
    for t in range(a):
      logits = self.decoder(encoded, mask, sequence[:, :a], deterministic=True)
      token = jnp.argmax(logits[:, t], axis=-1).astype(jnp.int32)
      ended = ended | (token == 1)
      sequence = sequence.at[:, t + 1].set(jnp.where(ended, 0, token))
    return jax.lax.stop_gradient(sequence[:, 1:])

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False,
             prompt_features: Optional[Mapping[str, Any]] = None) -> tuple[Array, Array]:
    if self.train_pass not in (1, 2):
      raise ValueError(f"TextualRecursionT5.train_pass={self.train_pass}; expected 1 or 2")
    if self.train_pass == 1:
      return self.encoder(encoder_input_tokens, deterministic=not enable_dropout,
                          prompt_features=_with_pass(prompt_features, 1))
    answer = self.intermediate_answer(encoder_input_tokens, prompt_features)
    return self.encoder(append_tokens(encoder_input_tokens, answer),
                        deterministic=not enable_dropout,
                        prompt_features=_with_pass(prompt_features, 2))


@registry.configurable
class NeuralRecursionT5(T5):
  """Pass 1's encoder output -> connector -> pass 2's prompt, one frozen T5, one graph."""

  def encode(self, encoder_input_tokens: Array, enable_dropout: bool = False,
             prompt_features: Optional[Mapping[str, Any]] = None) -> tuple[Array, Array]:
    deterministic = not enable_dropout
    first, first_mask = self.encoder(encoder_input_tokens, deterministic=deterministic,
                                     prompt_features=_with_pass(prompt_features, 1))
    return self.encoder(encoder_input_tokens, deterministic=deterministic,
                        prompt_features=_with_pass(prompt_features, 2,
                                                   **{READING: (first, first_mask)}))
